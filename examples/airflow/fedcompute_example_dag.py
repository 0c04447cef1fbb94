"""Example DAG: a Monte Carlo estimate of pi, computed on a fedcompute endpoint.

Four ``sample`` tasks (dynamic task mapping) run on the endpoint, ``estimate`` combines their
results there too (waiting in the triggerer: deferrable), and ``where`` runs a shell command on
the endpoint. The functions are defined right here in the DAG file: fedcompute ships them by
value, so the endpoint needs no copy of this file.

Run it with (Airflow 3.2 only loads DAG files from inside its DAGs folder)::

    export AIRFLOW_CONN_FEDCOMPUTE_DEFAULT='{"conn_type": "fedcompute",
        "host": "https://compute.example.org", "password": "<token>",
        "extra": {"endpoint_id": "<endpoint uuid>"}}'
    export AIRFLOW__CORE__DAGS_FOLDER=examples/airflow   # or copy this file into yours
    airflow dags test fedcompute_example
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG
from fedcompute.plugins.airflow import RemoteFunctionOperator, RemoteShellOperator


def sample(seed: int, n: int) -> int:
    """Throw ``n`` darts at the unit square; count those inside the quarter circle."""
    import random

    rng = random.Random(seed)
    return sum(rng.random() ** 2 + rng.random() ** 2 <= 1.0 for _ in range(n))


def estimate(hits: list[int], n: int) -> float:
    """Combine the batches into an estimate of pi."""
    pi = 4.0 * sum(hits) / (n * len(hits))
    print(f"pi is about {pi:.4f} ({len(hits)} batches of {n} darts)")
    return pi


with DAG(
    "fedcompute_example",
    schedule=None,
    start_date=dt.datetime(2024, 1, 1),
    catchup=False,
    params={"n": 20_000},
    render_template_as_native_obj=True,  # "{{ params.n }}" renders to an int
    tags=["fedcompute", "example"],
) as dag:
    where = RemoteShellOperator(task_id="where", command="echo running on $(hostname)")
    hits = RemoteFunctionOperator.partial(
        task_id="sample", python_callable=sample, op_kwargs={"n": "{{ params.n }}"},
    ).expand(op_args=[[seed] for seed in range(4)])
    pi = RemoteFunctionOperator(
        task_id="estimate", python_callable=estimate, op_args=[hits.output, "{{ params.n }}"],
        deferrable=True, timeout=dt.timedelta(minutes=10),
    )
    where >> hits
