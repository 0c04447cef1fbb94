"""The SGE engine on a real Grid Engine (``bash .ci/sge/start.sh``): jobs are ``qsub``'d, their
Dask workers run the work, Adaptive scales 0 → N → 0, a ``qdel``'d job's task is
rescheduled."""

from __future__ import annotations

import subprocess
import sys
import time

import cloudpickle
import pytest

from . import helpers
from .helpers import batch_jobs, task_env, wait_for

cloudpickle.register_pickle_by_value(sys.modules[__name__])
cloudpickle.register_pickle_by_value(helpers)

pytestmark = [pytest.mark.sge, pytest.mark.usefixtures("sge"), pytest.mark.timeout(300)]

JOB = {"type": "sge", "cores": 1, "memory": "1GB", "walltime": "00:10:00"}


def qstat_ids() -> list[str]:
    lines = batch_jobs(["qstat"]).splitlines()[2:]
    return [line.split()[0] for line in lines if line.split()]


def sleepy(seconds: float, x: int = 0) -> tuple[int, str | None]:
    time.sleep(seconds)
    return x, task_env("JOB_ID")["JOB_ID"]


def test_first_worker_runs_work_in_an_sge_job(start_engine, measure):
    engine = start_engine(**JOB, max_jobs=1)
    assert engine.status()["jobs"] == {} and engine.worker_count() == 0
    started = time.monotonic()
    future = engine.client.submit(task_env, "JOB_ID", "JOB_NAME", "QUEUE", pure=False)
    wait_for(engine.worker_count, 120, "the first worker")
    first_worker = time.monotonic() - started
    env = future.result(timeout=120)
    assert env["JOB_ID"] and env["JOB_NAME"].startswith("fedcompute-") and env["QUEUE"]
    status = wait_for(lambda: engine.status()["job_states_from"] == "qstat" and engine.status(),
                      10, "job states from qstat")
    assert status["jobs"] == {env["JOB_ID"]: "running"} and status["workers"] == 1
    assert env["JOB_ID"] in qstat_ids()
    measure("sge: time to first worker (idle, 0 jobs)", first_worker, "s")


def test_scales_up_under_a_burst_and_back_to_zero(start_engine):
    engine = start_engine(**JOB, max_jobs=2)
    futures = engine.client.map(sleepy, [0.5] * 30, range(30), pure=False)
    wait_for(lambda: engine.status()["jobs_running"] == 2, 120, "a second job under the burst")
    results = engine.client.gather(futures)
    assert [x for x, _ in results] == list(range(30))
    jobs = {job for _, job in results}
    assert len(jobs) == 2
    del futures, results
    wait_for(lambda: engine.status()["jobs"] == {} and engine.worker_count() == 0, 60,
             "Adaptive to delete the idle jobs")
    wait_for(lambda: not jobs & set(qstat_ids()), 30, "Grid Engine to forget the jobs")


def test_qdel_mid_task_is_rescheduled(start_engine):
    engine = start_engine(**JOB, max_jobs=1)
    future = engine.client.submit(sleepy, 8, 1, pure=False)
    key = future.key
    wait_for(lambda: getattr(engine.cluster.scheduler.tasks.get(key), "state", None)
             == "processing", 120, "the task to start")
    time.sleep(1)
    [killed] = engine.status()["jobs"]
    subprocess.run(["qdel", killed], check=True, timeout=30, capture_output=True)
    value, job = future.result(timeout=180)
    assert value == 1 and job != killed
