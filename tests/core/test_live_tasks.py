"""Tasks you can follow and stop, end to end: true states from the worker (leased, running
with host and pid), ``ComputeFuture.status()`` from the result stream's state events, and
cancellation of running tasks (on the fast lane and on the Dask path), one by one and a
2,000-task group in bulk."""

from __future__ import annotations

import time

import pytest
from fedcompute import Executor, TaskCancelled

from tests.reliability.helpers import running_stack, wait_for

pytestmark = pytest.mark.timeout(600)


def nap(seconds):
    import time

    time.sleep(seconds)
    return seconds


def where():
    import os
    import socket

    return socket.gethostname(), os.getpid()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("live"), endpoint=False) as stack:
        stack.start_endpoint("lane", engine={"type": "local", "workers": 2})
        stack.start_endpoint("dask", engine={"type": "local", "workers": 2}, fast_lane=False)
        yield stack


@pytest.mark.parametrize("path", ["lane", "dask"])
def test_true_states_and_where_it_ran(stack, path):
    client = stack.client()
    with Executor(stack.endpoint_ids[path], client=client) as ex:
        future = ex.submit(nap, 2)
        assert future.status() in ("pending", "received", "leased", "running")
        wait_for(lambda: future.status() == "running", 60, "status() to say running")
        info = client.get_task(future.task_id)
        assert info["status"] == "running"
        assert future.result(timeout=60) == 2
        assert future.status() == "success"
        info = client.get_task(future.task_id)
        stamps = info["timestamps"]
        order = ["received", "waiting-for-endpoint", "leased", "running", "success"]
        assert [stamps[s] for s in order] == sorted(stamps[s] for s in order)
        host, pid = ex.submit(where).result(timeout=60)
    record = client.get_task_record(future.task_id)
    assert record["worker"]["host"] == host and record["worker"]["pid"] > 0


@pytest.mark.parametrize("path", ["lane", "dask"])
def test_a_running_task_is_cancelled_and_its_worker_is_free_again(stack, path):
    client = stack.client()
    with Executor(stack.endpoint_ids[path], client=client) as ex:
        future = ex.submit(nap, 120)
        assert ex.flush(60) == []
        wait_for(lambda: client.get_task(future.task_id)["status"] == "running", 60,
                 "the task to run")
        asked = time.monotonic()
        assert future.cancel() is True
        assert future.cancelled() and future.status() == "cancelled"
        wait_for(lambda: client.get_task(future.task_id)["status"] == "cancelled", 30,
                 "the endpoint to stop it")
        stopped_after = time.monotonic() - asked
        exc = client.get_task(future.task_id)["exception"]
        assert isinstance(exc, TaskCancelled)
        # Both workers take work again at once.
        started = time.monotonic()
        assert [f.result(timeout=60) for f in [ex.submit(nap, 0.1) for _ in range(4)]] == [0.1] * 4
        assert time.monotonic() - started < 15
    assert stopped_after < 10, stopped_after


def test_a_2000_task_group_is_cancelled_in_bulk(stack):
    client = stack.client()
    ex = Executor(stack.endpoint_ids["lane"], client=client)
    futures = [ex.submit(nap, 0.5) for _ in range(2000)]
    wait_for(lambda: sum(f.status() == "running" for f in futures) >= 2, 120,
             "two tasks to run")
    states = ex.cancel_task_group()
    assert sum(states.values()) == 2000
    assert states.get("cancelling", 0) + states.get("cancelled", 0) >= 1990
    wait_for(lambda: all(f.done() for f in futures), 60, "every future to end")
    ends = [client.get_task(f.task_id)["status"] for f in futures[:50]]
    assert set(ends) <= {"cancelled", "success"}
    status = client.get_endpoint_status(stack.endpoint_ids["lane"])
    wait_for(lambda: client.get_endpoint_status(stack.endpoint_ids["lane"])["leased"] == 0, 60,
             "nothing left at the endpoint")
    assert status["queued"] == 0
    assert ex.submit(nap, 0).result(timeout=60) == 0  # the endpoint works on
    ex.shutdown()
