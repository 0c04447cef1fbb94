"""Wall time of a 20-task Airflow DAG: RemoteFunctionOperator against PythonOperator.

The DAG is a chain of N tasks, each adding one to its predecessor's XCom, run with
``dag.test()`` (what ``airflow dags test`` does: a real metadata DB, real task runner, inline
triggers). Three variants of the same DAG: ``PythonOperator`` (runs in the Airflow process),
``RemoteFunctionOperator`` waiting in the worker, and ``RemoteFunctionOperator`` deferred (the
trigger runs inline). The remote variants run on a real local stack (service + embedded Valkey
+ endpoint with 2 Dask workers), started by this script in temporary directories.

    python bench/airflow_dag.py [--tasks 20] [--runs 5]

Prints a table of median wall times (one warm-up run per variant is not counted) and the ratio
to PythonOperator.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Airflow reads its configuration at import: point it at a throwaway home first.
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="fedcompute-bench-airflow-"))
(AIRFLOW_HOME / "dags").mkdir()
os.environ.update({
    "AIRFLOW_HOME": str(AIRFLOW_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(AIRFLOW_HOME / "dags"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
})


def add_one(x: int) -> int:
    return x + 1


def build_dag(kind: str, tasks: int):
    import datetime as dt

    from airflow.providers.standard.operators.python import PythonOperator
    from airflow.sdk import DAG
    from fedcompute.plugins.airflow import RemoteFunctionOperator

    with DAG(f"bench_{kind}", schedule=None, start_date=dt.datetime(2024, 1, 1)) as dag:
        prev = None
        for i in range(tasks):
            args = [0] if prev is None else [prev.output]
            if kind == "python":
                op = PythonOperator(task_id=f"t{i}", python_callable=add_one, op_args=args)
            else:
                op = RemoteFunctionOperator(task_id=f"t{i}", python_callable=add_one,
                                            op_args=args, deferrable=kind == "deferred")
            if prev is not None:
                prev >> op
            prev = op
    return dag


def sync(dag) -> None:
    """Write a DAG built in this script to the metadata DB (``dag.test()`` needs it there)."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder=str(AIRFLOW_HOME / "dags"), include_examples=False)
    bag.bag_dag(dag)
    sync_bag_to_db(bag, "dags-folder", None)


@contextlib.contextmanager
def quiet():
    """Silence the task logs (they go to fds 1 and 2) while timing."""
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as null:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def time_dag(dag, tasks: int) -> float:
    started = time.perf_counter()
    with quiet():
        dr = dag.test()
    took = time.perf_counter() - started
    if dr.state != "success":
        raise RuntimeError(f"{dag.dag_id} ended {dr.state}")
    last = dr.get_task_instance(f"t{tasks - 1}").xcom_pull(task_ids=f"t{tasks - 1}")
    if last != tasks:
        raise RuntimeError(f"{dag.dag_id}: last task returned {last!r}, expected {tasks}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    opts = parser.parse_args()

    from fedcompute.testing import LocalStack

    airflow = Path(sys.executable).with_name("airflow")
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True)
    stack_home = Path(tempfile.mkdtemp(prefix="fedcompute-bench-stack-"))
    stack = LocalStack(stack_home)
    try:
        stack.up()
        os.environ["AIRFLOW_CONN_FEDCOMPUTE_DEFAULT"] = json.dumps({
            "conn_type": "fedcompute", "host": stack.service_url, "password": stack.token,
            "extra": {"endpoint_id": stack.endpoint_id}})
        variants = [("python", "PythonOperator"),
                    ("remote", "RemoteFunctionOperator (waits in worker)"),
                    ("deferred", "RemoteFunctionOperator (deferrable)")]
        times: dict[str, list[float]] = {}
        dags = {}
        for kind, _ in variants:
            dags[kind] = build_dag(kind, opts.tasks)
            sync(dags[kind])
            time_dag(dags[kind], opts.tasks)  # warm-up: imports, function registration
            times[kind] = []
        for _ in range(opts.runs):  # interleaved, so that load drifts hit all variants alike
            for kind, _ in variants:
                times[kind].append(time_dag(dags[kind], opts.tasks))
    finally:
        stack.down()
        shutil.rmtree(stack_home, ignore_errors=True)
        shutil.rmtree(AIRFLOW_HOME, ignore_errors=True)

    base = statistics.median(times["python"])
    print(f"\n{opts.tasks}-task DAG (a chain through XCom), dag.test(), median of {opts.runs} "
          f"runs after one warm-up, {os.cpu_count()} CPUs\n")
    print("| operator | median wall s | min s | max s | per task s | ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for kind, label in variants:
        med = statistics.median(times[kind])
        print(f"| {label} | {med:.2f} | {min(times[kind]):.2f} | {max(times[kind]):.2f} | "
              f"{med / opts.tasks:.3f} | {med / base:.2f}x |")


if __name__ == "__main__":
    main()
