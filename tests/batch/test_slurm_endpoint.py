"""End to end on a real Slurm: SDK → service → endpoint agent with the ``slurm`` engine →
workers in ``sbatch``'d jobs → results. A 1,000-task batch, scaling from 0 jobs and back to 0,
a ``scancel``'d job whose task is retried and completes."""

from __future__ import annotations

import subprocess
import time

import pytest
from fedcompute import Executor
from fedcompute.testing import LocalStack

from .helpers import wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm"), pytest.mark.timeout(400)]

ENGINE = {"type": "slurm", "cores": 1, "memory": "1GB", "walltime": "00:10:00",
          "min_jobs": 0, "max_jobs": 2, "adaptive": {"wait_count": 2}}


def where(x):
    import os

    return x, os.environ.get("SLURM_JOB_ID")


def sleep_then_where(seconds, x):
    import os
    import time

    time.sleep(seconds)
    return x, os.environ.get("SLURM_JOB_ID")


@pytest.fixture(scope="module")
def hpc(tmp_path_factory):
    """A real service plus an endpoint ``hpc`` whose engine is Slurm."""
    home = tmp_path_factory.mktemp("fedcompute-slurm")
    stack = LocalStack(home)
    try:
        stack.start_service()
        stack.token = stack.create_user("alice")
        stack.start_endpoint("hpc", engine=ENGINE, drain_timeout=5)
        yield stack
    finally:
        stack.down()


def details(stack: LocalStack) -> dict:
    return stack.client().get_endpoint_status(stack.endpoint_ids["hpc"])["details"]


def idle(stack: LocalStack) -> bool:
    d = details(stack)
    return d["jobs"] == {} and d["workers"] == 0


def test_batch_of_1000_through_sbatched_workers(hpc, measure):
    wait_for(lambda: idle(hpc), 90, "the endpoint to hold no job while idle", interval=1)
    client = hpc.client()
    with Executor(hpc.endpoint_ids["hpc"], client=client) as ex:
        started = time.monotonic()
        first = ex.submit(where, -1)
        assert first.result(timeout=120)[1]  # ran inside a Slurm job
        measure("slurm endpoint: first task from idle (0 jobs), via service", time.monotonic()
                - started, "s")
        timestamps = client.get_task(first.task_id)["timestamps"]
        assert "waiting-for-nodes" in timestamps and "running" in timestamps
        started = time.monotonic()
        results = list(ex.map(where, range(1000), timeout=300))
        took = time.monotonic() - started
    assert [x for x, _ in results] == list(range(1000))
    assert all(job for _, job in results)
    measure("slurm endpoint: 1,000-task batch via service", 1000 / took, "tasks/s")
    wait_for(lambda: idle(hpc), 90, "the idle endpoint to cancel its jobs", interval=1)


def test_batch_of_1000_on_a_local_endpoint_for_comparison(hpc, measure):
    endpoint_id = hpc.start_endpoint("local", engine={"type": "local", "workers": 2},
                                     drain_timeout=5)
    try:
        with Executor(endpoint_id, client=hpc.client()) as ex:
            started = time.monotonic()
            assert ex.submit(where, -1).result(timeout=60)[0] == -1
            measure("local endpoint: first task (workers up), via service",
                    time.monotonic() - started, "s")
            started = time.monotonic()
            results = list(ex.map(where, range(1000), timeout=300))
            took = time.monotonic() - started
        assert [x for x, _ in results] == list(range(1000))
        measure("local endpoint: 1,000-task batch via service", 1000 / took, "tasks/s")
    finally:
        hpc.stop_endpoint("local")


def test_scales_up_under_load_and_back_to_zero(hpc):
    with Executor(hpc.endpoint_ids["hpc"], client=hpc.client()) as ex:
        futures = [ex.submit(sleep_then_where, 2, i) for i in range(12)]
        most = wait_for(lambda: details(hpc)["jobs_running"] == 2 and details(hpc), 120,
                        "two running jobs", interval=0.5)
        results = [f.result(timeout=180) for f in futures]
    assert most["jobs_running"] == 2 and len(most["jobs"]) == 2
    assert [x for x, _ in results] == list(range(12))
    assert all(job for _, job in results)
    wait_for(lambda: idle(hpc), 90, "scaling back to 0 jobs", interval=1)


def test_scancelled_job_task_is_retried_and_completes(hpc):
    with Executor(hpc.endpoint_ids["hpc"], client=hpc.client()) as ex:
        # Long enough to be still running when the kill comes: the endpoint's status is
        # as old as its last heartbeat (5 s).
        future = ex.submit(sleep_then_where, 25, 7)
        jobs = wait_for(lambda: details(hpc)["jobs_running"] == 1 and details(hpc)["jobs"], 120,
                        "a running job", interval=0.5)
        time.sleep(2)  # the task is running in it
        [killed] = jobs
        subprocess.run(["scancel", killed], check=True, timeout=30)
        value, job = future.result(timeout=240)
    assert value == 7 and job and job != killed


def test_tasks_fail_with_the_schedulers_error_when_every_job_is_refused(hpc):
    """A partition Slurm does not have: sbatch refuses every job. The waiting tasks fail with
    JobSubmissionFailed and sbatch's own words after fail_after_job_refusals, and the endpoint
    shows the refusals meanwhile."""
    from fedcompute import errors

    endpoint_id = hpc.start_endpoint(
        "refused", engine={**ENGINE, "queue": "no-such-partition"}, drain_timeout=5,
        fail_after_job_refusals=5)
    client = hpc.client()
    try:
        with Executor(endpoint_id, client=client) as ex:
            futures = [ex.submit(where, i) for i in range(3)]
            wait_for(lambda: client.get_endpoint_status(endpoint_id)["details"].get(
                "jobs_refused"), 60, "the endpoint to report refused jobs", interval=1)
            started = time.monotonic()
            for future in futures:
                with pytest.raises(errors.JobSubmissionFailed,
                                   match="(?i)invalid partition.*no-such-partition"):
                    future.result(timeout=120)
            assert time.monotonic() - started < 60
    finally:
        hpc.stop_endpoint("refused")
