"""The SSX pipeline as an Airflow DAG (``ssx_pipeline``) whose steps run on a fedcompute
endpoint through ``RemoteFunctionOperator``.

The analysis is a mapped task, one remote task per chunk of frames (dynamic task mapping over
the plan); each saves its result on the endpoint's disk and returns only a small reference, so
XComs stay small. ``hit_rate_gate`` (a ``ShortCircuitOperator``) skips QA, the transfer of the
results and publication when the hit rate is below the threshold; ``report`` runs either way
and logs (and optionally writes) the pipeline record.

Run it with the stack's settings in the environment (``fedcompute dev --run ...`` sets them;
otherwise define the ``fedcompute_default`` connection) and the DAGs folder pointing here::

    export AIRFLOW__CORE__DAGS_FOLDER=examples/ssx/flows   # .airflowignore skips the rest
    airflow dags test ssx_pipeline -c '{"master": "/data/ssx_master.h5", "work_dir": "/work"}'

``python -m fedcompute_ssx demo --engine airflow`` does all of it, with a throwaway
AIRFLOW_HOME. The step functions live in ``fedcompute_ssx.flows.common`` (pickled by reference:
the endpoint needs ``fedcompute_ssx``, not Airflow).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

from airflow.providers.standard.operators.python import ShortCircuitOperator
from airflow.sdk import DAG, task
from fedcompute.plugins.airflow import RemoteFunctionOperator
from fedcompute_ssx.flows import common

DAG_ID = "ssx_pipeline"
RAW = "ti.xcom_pull(task_ids='transfer_raw')"


def hit_rate_passed(check: dict) -> bool:
    """The gate: continue to QA and publication only when the hit rate reached the threshold."""
    print(f"hit rate {check['hit_rate']:.1%} ({check['n_hits']}/{check['n_frames']}), "
          f"threshold {check['threshold']:.1%}: {'passed' if check['passed'] else 'below'}")
    return bool(check["passed"])


with DAG(
    DAG_ID,
    schedule=None,
    start_date=dt.datetime(2024, 1, 1),
    catchup=False,
    params={
        "master": "",  # the run's NeXus master file, on the endpoint's file system
        "work_dir": "",  # working folder on the endpoint
        "endpoint_id": os.environ.get("FEDCOMPUTE_ENDPOINT_ID"),  # None: the connection's
        "frames_per_chunk": common.FRAMES_PER_CHUNK,
        "spot_params": None,
        "threshold": common.THRESHOLD,
        "repository": None,  # default: <work_dir>/repository
        "catalogue": None,  # default: <work_dir>/catalogue.sqlite
        "owner": "beamline",
        "allowed_users": [],
        "title": None,
        "use_truth": True,
        "report": None,  # a path to write the pipeline record to (JSON), on this side
    },
    render_template_as_native_obj=True,  # "{{ params.x }}" renders to the value, not a str
    default_args={"endpoint_id": "{{ params.endpoint_id }}", "poll_interval": 2.0},
    tags=["fedcompute", "ssx", "example"],
    doc_md=__doc__,
) as dag:
    transfer_raw = RemoteFunctionOperator(
        task_id="transfer_raw", python_callable=common.stage, retries=1,
        op_kwargs={"master": "{{ params.master }}", "work_dir": "{{ params.work_dir }}"})
    plan_chunks = RemoteFunctionOperator(
        task_id="plan_chunks", python_callable=common.plan,
        op_kwargs={"master": f"{{{{ {RAW}['master'] }}}}",
                   "frames_per_chunk": "{{ params.frames_per_chunk }}",
                   "params": "{{ params.spot_params }}",
                   "out_dir": "{{ params.work_dir }}/chunks"})
    # One mapped task instance per chunk; plan_chunks returns their keyword arguments.
    analyse_chunk = RemoteFunctionOperator.partial(
        task_id="analyse_chunk", python_callable=common.analyse, retries=1,
    ).expand(op_kwargs=plan_chunks.output)
    check_threshold = RemoteFunctionOperator(
        task_id="check_threshold", python_callable=common.check,
        op_args=[analyse_chunk.output, "{{ params.threshold }}"])
    gate = ShortCircuitOperator(
        task_id="hit_rate_gate", python_callable=hit_rate_passed,
        op_args=[check_threshold.output],
        # Skip only what follows the gate; ``report`` keeps its own trigger rule.
        ignore_downstream_trigger_rules=False)
    qa = RemoteFunctionOperator(
        task_id="qa", python_callable=common.run_qa,
        op_kwargs={"chunks": analyse_chunk.output, "work_dir": "{{ params.work_dir }}",
                   "title": "{{ params.title }}",
                   "truth": f"{{{{ {RAW}['truth'] if params.use_truth else None }}}}"})
    transfer_results = RemoteFunctionOperator(
        task_id="transfer_results", python_callable=common.move_results, retries=1,
        op_kwargs={"work_dir": "{{ params.work_dir }}"})
    publish = RemoteFunctionOperator(
        task_id="publish", python_callable=common.publish,
        op_args=["{{ params.work_dir }}", f"{{{{ {RAW}['master'] }}}}"],
        op_kwargs={
            "repository": "{{ params.repository or params.work_dir ~ '/repository' }}",
            "catalogue": "{{ params.catalogue or params.work_dir ~ '/catalogue.sqlite' }}",
            "owner": "{{ params.owner }}", "allowed_users": "{{ params.allowed_users }}",
            "qa_summary": qa.output, "params": "{{ params.spot_params }}",
            "title": "{{ params.title }}"})

    @task(trigger_rule="none_failed")
    def report(**context) -> dict:
        """The pipeline record, as the other engines return it (skipped steps are None)."""
        ti, dag_run, params = context["ti"], context["dag_run"], context["params"]
        pull = {t: ti.xcom_pull(task_ids=t) for t in
                ("transfer_raw", "plan_chunks", "check_threshold", "qa", "transfer_results",
                 "publish")}
        started = dag_run.start_date or dt.datetime.now(dt.UTC)
        record = common.result(
            "airflow", raw=pull["transfer_raw"], n_chunks=len(pull["plan_chunks"]),
            check=pull["check_threshold"], qa=pull["qa"], transfer=pull["transfer_results"],
            published=pull["publish"],
            seconds=(dt.datetime.now(dt.UTC) - started).total_seconds())
        if params.get("report"):
            Path(params["report"]).parent.mkdir(parents=True, exist_ok=True)
            Path(params["report"]).write_text(json.dumps(record, indent=1, default=str))
        return record

    done = report()
    transfer_raw >> plan_chunks >> analyse_chunk >> check_threshold >> gate
    gate >> qa >> transfer_results >> publish >> done
    check_threshold >> done
