"""Every task ends, end to end: a task not started by its ``deadline`` fails with
``DeadlineExceeded`` (queued in the service, or held by an endpoint behind other work), one
that started in time runs to its end, and a task still unfinished when its record is about to
expire fails with ``TaskExpired`` instead of vanishing. The stack runs with a 30 s task TTL and
1 s maintenance rounds, so that expiry comes within the test."""

from __future__ import annotations

import datetime
import time

import pytest
from fedcompute import DeadlineExceeded, Executor, TaskExpired

from tests.reliability.agent_api import FakeAgent
from tests.reliability.helpers import running_stack, wait_for

pytestmark = pytest.mark.timeout(300)

TTL = 30


def nap(seconds):
    import time

    time.sleep(seconds)
    return seconds


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    env = {"FEDCOMPUTE_TASK_TTL": TTL, "FEDCOMPUTE_MAINTENANCE_INTERVAL": 1}
    with running_stack(tmp_path_factory.mktemp("deadlines"), env=env,
                       engine={"type": "local", "workers": 1}) as stack:
        yield stack


def test_a_queued_task_fails_at_its_deadline(stack):
    client = stack.client()
    offline = client.register_endpoint("nobody-home")["endpoint_id"]
    with Executor(offline, client=client, check_versions=False,
                  offline_warning_after=None) as ex:
        started = time.monotonic()
        late = ex.submit_with(nap, (0,), deadline=2)
        at = ex.submit_with(nap, (0,), deadline=datetime.datetime.now(datetime.UTC)
                            + datetime.timedelta(seconds=2))
        for future in (late, at):
            with pytest.raises(DeadlineExceeded, match="did not start by its deadline"):
                future.result(timeout=60)
        assert time.monotonic() - started < 20
    info = client.get_task(late.task_id)
    assert info["status"] == "failed" and "failed" in info["timestamps"]


def test_a_task_held_behind_other_work_fails_at_its_deadline(stack):
    client = stack.client()
    with Executor(stack.endpoint_id, client=client) as ex:
        long = ex.submit(nap, 6)  # the one worker is busy for 6 s
        wait_for(lambda: long.status() == "running", 60, "the long task to start")
        behind = ex.submit_with(nap, (0,), deadline=2)
        in_time = ex.submit_with(nap, (0,), deadline=120)
        with pytest.raises(DeadlineExceeded):
            behind.result(timeout=60)
        assert long.result(timeout=60) == 6, "the running task is not touched"
        assert in_time.result(timeout=60) == 0


def test_a_started_task_runs_past_its_deadline(stack):
    with Executor(stack.endpoint_id, client=stack.client(), deadline=30) as ex:
        future = ex.submit(nap, 1)
        assert future.result(timeout=60) == 1


def test_bad_deadlines_are_refused_at_once(stack):
    with Executor(stack.endpoint_id, client=stack.client()) as ex:
        with pytest.raises(ValueError, match="deadline"):
            ex.submit_with(nap, (0,), deadline=-1)
        with pytest.raises(ValueError, match="timezone"):
            ex.submit_with(nap, (0,), deadline=datetime.datetime.now())
    client = stack.client()
    with pytest.raises(Exception, match="deadline"):
        client.submit_tasks(stack.endpoint_id, [{
            "task_id": "9a7c3f6e-4b8d-4c1e-9f2a-0b1c2d3e4f50",
            "function_id": client.register_function(nap),
            "payload": b"x", "options": {"deadline": "tomorrow"}}],
            "9a7c3f6e-4b8d-4c1e-9f2a-0b1c2d3e4f51")


def test_unfinished_tasks_fail_as_expired_before_their_record_does(stack):
    client = stack.client()
    reg = client.register_endpoint("holds-forever")
    agent = FakeAgent(stack.service_url, reg["credential"])
    agent.connect()
    ex = Executor(reg["endpoint_id"], client=client, check_versions=False)
    futures = [ex.submit(nap, i) for i in range(5)]
    assert ex.flush(60) == []
    held = agent.lease(max_tasks=2)["tasks"]  # held by an agent that never answers
    assert len(held) == 2
    started = time.monotonic()
    for future in futures:
        with pytest.raises(TaskExpired, match="record would expire"):
            future.result(timeout=TTL + 30)
    waited = time.monotonic() - started
    assert TTL - 10 < waited < TTL, waited
    info = client.get_task(held[0]["task_id"])
    assert info["status"] == "failed" and isinstance(info["exception"], TaskExpired)
    ex.shutdown(wait=False)
    agent.close()
