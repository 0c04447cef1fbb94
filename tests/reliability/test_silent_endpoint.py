"""An endpoint that goes silent (its processes frozen with SIGSTOP: no crash, no closed
connection, just silence) turns offline within the heartbeat timeout; its leased tasks are
reclaimed and rerun when it comes back; a task whose endpoint keeps vanishing fails with
``EndpointLost`` after ``max_attempts``."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from fedcompute import Executor, serialize
from fedcompute.errors import EndpointLost
from fedcompute.process import alive
from fedcompute.protocol import unpackb

from .agent_api import FakeAgent
from .helpers import (
    assert_exactly_once,
    process_tree,
    report,
    running_stack,
    wait_for,
    work,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

HEARTBEAT_INTERVAL = 1.0
HEARTBEAT_TIMEOUT = 6.0
MAINTENANCE_INTERVAL = 1.0
MAX_ATTEMPTS = 2
N = 3000
MS = 5


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    env = {"FEDCOMPUTE_HEARTBEAT_INTERVAL": HEARTBEAT_INTERVAL,
           "FEDCOMPUTE_HEARTBEAT_TIMEOUT": HEARTBEAT_TIMEOUT,
           "FEDCOMPUTE_MAINTENANCE_INTERVAL": MAINTENANCE_INTERVAL,
           "FEDCOMPUTE_MAX_ATTEMPTS": MAX_ATTEMPTS}
    with running_stack(tmp_path_factory.mktemp("rel-silent"), env=env) as stack:
        yield stack


def _freeze(pid: int) -> list[int]:
    pids = [p.pid for p in process_tree(pid)]
    for p in process_tree(pid):
        p.send_signal(signal.SIGSTOP)
    return pids


def test_silent_endpoint_goes_offline_and_its_leases_are_rerun(stack):
    client = stack.client()
    ex = Executor(stack.endpoint_id, client=client)
    futures = [ex.submit(work, i, MS) for i in range(N)]
    expected = {f.task_id: 2 * i for i, f in enumerate(futures)}
    wait_for(lambda: sum(f.done() for f in futures) >= N // 5, 300, "a fifth of the tasks")
    agent = stack.endpoints["local"]
    frozen = _freeze(agent.pid)
    silent_since = time.monotonic()
    in_flight = N - sum(f.done() for f in futures)
    try:
        wait_for(lambda: client.get_endpoint_status(stack.endpoint_id)["status"] == "offline",
                 60, "the endpoint to turn offline")
        offline_after = time.monotonic() - silent_since
        # Offline is judged from the last heartbeat: at most one interval before the freeze.
        assert offline_after <= HEARTBEAT_TIMEOUT + HEARTBEAT_INTERVAL + 5, offline_after
        # The maintenance job hands its leases back to the queue, counting one attempt.
        status = wait_for(lambda: (s := client.get_endpoint_status(stack.endpoint_id))["leased"]
                          == 0 and s, 60, "the leases to be reclaimed")
        assert status["queued"] > 0
        pending = [f.task_id for f in futures if not f.done()]
        records = client.get_batch_result(pending)
        assert {r["status"] for r in records.values()} == {"waiting-for-endpoint"}
        assert {r["attempts"] for r in records.values()} == {1}
    finally:
        # Killed while still frozen: it never speaks again (a resumed agent would, legitimately,
        # take its session back and lease again).
        stack.stop_endpoint("local", sig=signal.SIGKILL)
        # Its frozen children cannot act on their parent's death until they run again.
        for pid in frozen:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    wait_for(lambda: not [pid for pid in frozen if alive(pid)], 30,
             "the endpoint's processes to end with it")
    stack.start_endpoint("local")
    figures = assert_exactly_once(client, ex.task_group_id, futures, expected)
    ex.shutdown()
    assert client.get_endpoint_status(stack.endpoint_id)["status"] == "online"
    report("endpoint silent (SIGSTOP), reclaimed, restarted", in_flight=in_flight,
           offline_after_s=round(offline_after, 1), heartbeat_timeout_s=HEARTBEAT_TIMEOUT,
           reclaimed=status["queued"], **figures)


def double(x):
    return 2 * x


def test_task_of_an_endpoint_that_keeps_vanishing_fails_after_max_attempts(stack):
    client = stack.client()
    reg = client.register_endpoint("vanishing")
    fid = client.register_function(double)
    task_id = client.run(21, endpoint_id=reg["endpoint_id"], function_id=fid)
    for attempt in range(MAX_ATTEMPTS):
        agent = FakeAgent(stack.service_url, reg["credential"])
        agent.connect()
        assert client.get_endpoint_status(reg["endpoint_id"])["status"] == "online"
        leased = agent.lease(wait=5)["tasks"]
        assert [(t["task_id"], t["attempt"]) for t in leased] == [(task_id, attempt)]
        # ...and the agent goes silent.
        final = attempt == MAX_ATTEMPTS - 1
        wait_for(lambda f=final: client.get_task(task_id)["status"]
                 == ("failed" if f else "waiting-for-endpoint"), 60,
                 f"the lease of attempt {attempt} to be reclaimed")
        agent.close()
    assert client.get_endpoint_status(reg["endpoint_id"])["status"] == "offline"
    with pytest.raises(EndpointLost, match=f"{MAX_ATTEMPTS} times; giving up"):
        client.get_result(task_id)
    assert client.get_task(task_id)["attempts"] == MAX_ATTEMPTS


def test_a_silent_agents_long_poll_cannot_retake_its_reclaimed_tasks_and_it_may_resume(stack):
    """A laptop endpoint sleeps with a lease long-poll still blocked in the service. When its
    leases are reclaimed, that long-poll must not take them back (burning an attempt each
    round); when the laptop wakes up, the agent carries on with the same session."""
    client = stack.client()
    reg = client.register_endpoint("sleepy")
    fid = client.register_function(double)
    task_id = client.run(4, endpoint_id=reg["endpoint_id"], function_id=fid)
    agent = FakeAgent(stack.service_url, reg["credential"])
    agent.connect()
    assert [t["task_id"] for t in agent.lease(wait=5)["tasks"]] == [task_id]
    replies = {}
    poll = threading.Thread(target=lambda: replies.setdefault(
        "poll", agent.post("/lease", {"max_tasks": 10, "wait": 30})))
    poll.start()
    # Silent from now on: reclaimed after the heartbeat timeout, with one attempt counted.
    wait_for(lambda: client.get_task(task_id)["status"] == "waiting-for-endpoint", 60,
             "the lease to be reclaimed")
    poll.join(60)
    assert replies["poll"].status_code == 200
    assert unpackb(replies["poll"].content)["tasks"] == [], "the stale long-poll got nothing"
    time.sleep(3 * MAINTENANCE_INTERVAL)  # more maintenance rounds: no attempt burnt
    info = client.get_task(task_id)
    assert (info["status"], info["attempts"]) == ("waiting-for-endpoint", 1)
    assert client.get_endpoint_status(reg["endpoint_id"])["status"] == "offline"
    # The agent wakes up: same session, it is online again and finishes the task.
    agent.heartbeat()
    assert client.get_endpoint_status(reg["endpoint_id"])["status"] == "online"
    leased = agent.lease(wait=5)["tasks"]
    assert [(t["task_id"], t["attempt"]) for t in leased] == [(task_id, 1)]
    agent.results([{"task_id": task_id, "status": "success", "result": serialize.dumps(8)}])
    assert client.get_result(task_id) == 8
