"""The Slurm engine on a real Slurm (``bash .ci/slurm/start.sh``): jobs are ``sbatch``'d,
their Dask workers run the work, Adaptive scales 0 → N → 0, a ``scancel``'d job's task is
rescheduled, workers retire before the walltime and are replaced; numbers against ``local``."""

from __future__ import annotations

import subprocess
import sys
import time

import cloudpickle
import pytest
from fedcompute.endpoint.engines.resources import dask_resources

from . import helpers
from .helpers import batch_jobs, task_env, wait_for

# Workers import nothing from tests/: ship these functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])
cloudpickle.register_pickle_by_value(helpers)

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm"), pytest.mark.timeout(300)]

JOB = {"type": "slurm", "cores": 1, "memory": "1GB", "walltime": "00:10:00"}


def squeue(name: str) -> list[str]:
    """Ids of our jobs still known to Slurm (pending, running or completing)."""
    return batch_jobs(["squeue", "--noheader", "--name", name, "--format", "%i"]).split()


def sleepy(seconds: float, x: int = 0) -> tuple[int, str | None]:
    time.sleep(seconds)
    return x, task_env("SLURM_JOB_ID")["SLURM_JOB_ID"]


def worker_daemon() -> bool:
    import dask

    return dask.config.get("distributed.worker.daemon")


def noop(x: int) -> int:
    return x


def test_first_worker_runs_work_in_a_slurm_job(start_engine, measure):
    engine = start_engine(**JOB, max_jobs=1, worker_resources={"GPU": 1})
    assert engine.cluster.scheduler.address.startswith("tcp://127.0.0.1:")
    assert engine.status()["jobs"] == {} and engine.worker_count() == 0  # idle: no job
    started = time.monotonic()
    spec = dask_resources({"GPU": 1, "walltime": 60})
    future = engine.client.submit(task_env, "SLURM_JOB_ID", "SLURM_JOB_NAME",
                                  resources=spec["resources"], pure=False)
    wait_for(engine.worker_count, 120, "the first worker")
    first_worker = time.monotonic() - started
    env = future.result(timeout=120)
    first_result = time.monotonic() - started
    assert env["SLURM_JOB_ID"] and env["SLURM_JOB_NAME"].startswith("fedcompute-")
    status = wait_for(lambda: engine.status()["job_states_from"] == "squeue" and engine.status(),
                      10, "job states from squeue")
    assert status["workers"] == 1 and status["jobs_running"] == 1, status
    assert status["jobs"] == {env["SLURM_JOB_ID"]: "running"}
    assert env["SLURM_JOB_ID"] in squeue(env["SLURM_JOB_NAME"])
    # The worker settings every engine runs with reach workers in jobs: user code may start
    # processes (a daemonic worker could not).
    assert engine.client.submit(worker_daemon, pure=False).result(timeout=60) is False
    measure("slurm: time to first worker (idle, 0 jobs)", first_worker, "s")
    measure("slurm: time to first result (idle, 0 jobs)", first_result, "s")


def test_local_time_to_first_worker(start_engine, measure):
    started = time.monotonic()
    engine = start_engine(type="local", workers=1)
    wait_for(engine.worker_count, 60, "the local worker")
    measure("local: time to first worker (engine start)", time.monotonic() - started, "s")
    assert engine.client.submit(noop, 7).result(timeout=60) == 7


def test_scales_up_under_a_burst_and_back_to_zero(start_engine):
    engine = start_engine(**JOB, max_jobs=2)
    futures = engine.client.map(sleepy, [0.5] * 40, range(40), pure=False)
    most = wait_for(lambda: engine.status()["jobs_running"] >= 2 and engine.status(), 120,
                    "a second job under the burst")
    assert most["jobs_running"] == 2 and len(most["jobs"]) == 2
    results = engine.client.gather(futures)
    assert [x for x, _ in results] == list(range(40))
    assert len({job for _, job in results}) == 2  # the work ran in both jobs
    name = engine.cluster_kwargs["job_name"]
    del futures, results  # results held by workers would keep them
    wait_for(lambda: engine.status()["jobs"] == {} and engine.worker_count() == 0, 60,
             "Adaptive to cancel the idle jobs")
    wait_for(lambda: squeue(name) == [], 30, "Slurm to forget the jobs")


def test_agent_hint_brings_jobs_for_outstanding_tasks(start_engine):
    engine = start_engine(**JOB, max_jobs=2, adaptive={"wait_count": 2})
    engine.scale_for(1)  # one task leased, not (yet) visible to Dask
    wait_for(engine.worker_count, 120, "a job for the outstanding task")
    time.sleep(4)  # several Adaptive rounds: the job is held although Dask sees no work
    assert engine.status()["jobs_running"] == 1 and len(engine.status()["jobs"]) == 1
    engine.scale_for(50)  # a burst: one thread per task, up to max_jobs
    wait_for(lambda: engine.status()["jobs_running"] == 2, 120, "a second job for the burst")
    engine.scale_for(0)
    wait_for(lambda: engine.status()["jobs"] == {}, 60, "the jobs to be released")


def test_scancel_mid_task_is_rescheduled(start_engine):
    engine = start_engine(**JOB, max_jobs=1)
    future = engine.client.submit(sleepy, 8, 1, pure=False)
    key = future.key
    wait_for(lambda: getattr(engine.cluster.scheduler.tasks.get(key), "state", None)
             == "processing", 120, "the task to start")
    time.sleep(1)
    [killed] = engine.status()["jobs"]
    subprocess.run(["scancel", killed], check=True, timeout=30)
    value, job = future.result(timeout=180)
    assert value == 1 and job != killed  # ran again, in a new job
    assert killed not in engine.status()["jobs"]


def test_worker_outliving_its_job_is_stopped(start_engine):
    # As if the job's processes escaped the batch system's tracking: Slurm reports the job
    # gone while its worker still runs. The engine stops that worker (its task is rescheduled
    # in a fresh job) and cancels what is left of the job.
    engine = start_engine(**JOB, max_jobs=1, lost_job_timeout=2)
    future = engine.client.submit(sleepy, 12, 3, pure=False)
    key = future.key
    wait_for(lambda: getattr(engine.cluster.scheduler.tasks.get(key), "state", None)
             == "processing", 120, "the task to start")
    [first] = engine.status()["jobs"]
    real = engine.parse_job_states
    engine.parse_job_states = lambda out, ids: {**real(out, ids), first: "gone"}
    wait_for(lambda: first not in engine.status()["jobs"], 30, "the engine to drop the job")
    value, job = future.result(timeout=180)
    assert value == 3 and job != first
    assert first not in squeue(engine.cluster_kwargs["job_name"])


def test_workers_retire_before_walltime_and_work_goes_on(start_engine):
    # 30 s jobs: workers retire after ~23 s (lifetime derived from walltime); the 40 one-second
    # tasks need ~40 s on one worker, so they finish only if fresh jobs replace retired ones.
    # Results are taken as they come, as the endpoint agent does: a retiring worker then holds
    # no unique data and leaves gracefully, its running task rescheduled without counting as
    # a failure.
    engine = start_engine(**{**JOB, "walltime": "00:00:30"}, max_jobs=1)
    assert "--lifetime 23s --lifetime-stagger 1s" in engine.job_script()
    results: list = []
    errors: list = []
    pending = set(engine.client.map(sleepy, [1.0] * 40, range(40), pure=False))

    def collect(future):
        try:
            results.append(future.result())
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        pending.discard(future)  # the last reference: the worker may forget the result

    for future in list(pending):
        future.add_done_callback(collect)
    wait_for(lambda: len(results) + len(errors) == 40, 240, "all 40 tasks")
    assert errors == []
    assert sorted(x for x, _ in results) == list(range(40))
    assert len({job for _, job in results}) >= 2


@pytest.mark.parametrize("kind", ["slurm", "local"])
def test_throughput_of_1000_noop_tasks(kind, start_engine, measure):
    options = ({**JOB, "min_jobs": 2, "max_jobs": 2} if kind == "slurm"
               else {"type": "local", "workers": 2})
    engine = start_engine(**options)
    wait_for(lambda: engine.worker_count() >= 2, 120, "two workers")
    engine.client.gather(engine.client.map(noop, range(20), pure=False))  # warm up
    started = time.monotonic()
    results = engine.client.gather(engine.client.map(noop, range(1000), pure=False))
    took = time.monotonic() - started
    assert results == list(range(1000))
    measure(f"{kind}: 1,000 no-op tasks through the engine's client", 1000 / took, "tasks/s")
