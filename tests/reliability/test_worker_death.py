"""A Dask worker process dies under load (a task calls ``os._exit``, or the process is
SIGKILLed): only the tasks on it are affected, each fails clearly (``WorkerLost``) or is rerun,
the endpoint stays up, and every task ends exactly once."""

from __future__ import annotations

import pytest
from fedcompute import Executor
from fedcompute.errors import WorkerLost

from .helpers import (
    collect,
    kill_pids,
    process_tree,
    report,
    result_stream,
    running_stack,
    wait_for,
    work,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

N = 2000


def exit_hard(code: int) -> None:
    import os

    os._exit(code)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("rel-worker-death")) as stack:
        yield stack


def _check(stack, ex, futures, expected, allowed_failures: set[str],
           others: frozenset = frozenset()) -> dict:
    outcomes = collect(futures, 300)
    stream = result_stream(stack.client(), ex.task_group_id)
    assert set(stream) == set(expected) | others and set(stream.values()) == {1}, \
        "every task must finish exactly once"
    failed = {tid: value for tid, (ok, value) in outcomes.items() if not ok}
    for tid, exc in failed.items():
        assert isinstance(exc, WorkerLost), f"task {tid} failed unclearly: {exc!r}"
        assert "worker process running this task died" in str(exc)
        assert tid in allowed_failures, f"task {tid} was not on the dead worker"
    for tid, (ok, value) in outcomes.items():
        if ok:
            assert value == expected[tid]
    return {"tasks": len(futures), "lost": len(set(expected) - set(stream)),
            "failed_worker_lost": len(failed)}


def test_task_calling_os_exit_fails_alone(stack):
    agent = stack.endpoints["local"]
    with Executor(stack.endpoint_id, client=stack.client()) as ex:
        futures = [ex.submit(work, i, 1) for i in range(N)]
        killer = ex.submit(exit_hard, 3)
        futures += [ex.submit(work, i, 1) for i in range(N, 2 * N)]
        expected = {f.task_id: 2 * i for i, f in enumerate(futures)}
        with pytest.raises(WorkerLost, match="worker process running this task died"):
            killer.result(timeout=300)
        figures = _check(stack, ex, futures, expected, allowed_failures=set(),
                         others=frozenset({killer.task_id}))
    assert agent.poll() is None, "the endpoint agent must survive"
    assert stack.client().get_endpoint_status(stack.endpoint_id)["status"] == "online"
    report("function calls os._exit under load", in_flight=2 * N + 1, **figures)


def _dask_workers(agent_pid: int) -> list[int]:
    """The Dask worker processes of the endpoint (children of the agent's nannies)."""
    return [p.pid for p in process_tree(agent_pid)
            if " ".join(p.cmdline()).startswith("dask worker")]  # distributed sets the title


def test_sigkill_dask_worker_under_load(stack):
    agent = stack.endpoints["local"]
    workers = wait_for(lambda: len(_dask_workers(agent.pid)) == 2 and _dask_workers(agent.pid),
                       120, "two Dask worker processes")
    with Executor(stack.endpoint_id, client=stack.client()) as ex:
        futures = [ex.submit(work, i, 2) for i in range(N)]
        expected = {f.task_id: 2 * i for i, f in enumerate(futures)}
        wait_for(lambda: sum(f.done() for f in futures) >= N // 4, 180, "a quarter done")
        in_flight = N - sum(f.done() for f in futures)
        kill_pids(workers[:1])
        # Any task may have been on the killed worker: those may fail with WorkerLost, no other
        # failure is acceptable, and nothing may be lost.
        figures = _check(stack, ex, futures, expected, allowed_failures=set(expected))
    assert agent.poll() is None, "the endpoint agent must survive"
    # The nanny replaces the worker and the endpoint keeps serving.
    wait_for(lambda: len(_dask_workers(agent.pid)) == 2, 120, "the worker to be replaced")
    with Executor(stack.endpoint_id, client=stack.client()) as ex:
        assert list(ex.map(work, range(50), timeout=120)) == [2 * i for i in range(50)]
    report("Dask worker SIGKILLed under load", in_flight=in_flight, **figures)
