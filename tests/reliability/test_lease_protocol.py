"""The lease protocol under the faults a real network and killed processes produce, driven by a
scripted agent so each fault lands exactly where it hurts: a lost lease reply, a long-poll that
outlives its agent, a result delivered twice."""

from __future__ import annotations

import threading
import time
import uuid

import httpx
import pytest
from fedcompute import serialize

from .agent_api import FakeAgent, success
from .helpers import running_stack, wait_for

pytestmark = [pytest.mark.timeout(300)]


def double(x):
    return 2 * x


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("rel-lease"), endpoint=False) as stack:
        yield stack


def _endpoint(stack, name: str) -> tuple[str, str]:
    reg = stack.client().register_endpoint(name)
    return reg["endpoint_id"], reg["credential"]


def _submit(stack, endpoint_id: str, n: int) -> list[str]:
    client = stack.client()
    fid = client.register_function(double)
    batch = client.create_batch()
    ids = [batch.add(fid, (i,)) for i in range(n)]
    client.batch_run(endpoint_id, batch)
    return ids


def _states(stack, ids: list[str]) -> list[str]:
    return [r["status"] for r in stack.client().get_batch_result(ids).values()]


def test_lost_lease_reply_is_recovered(stack):
    endpoint_id, credential = _endpoint(stack, "lost-reply")
    agent = FakeAgent(stack.service_url, credential)
    agent.connect()
    ids = _submit(stack, endpoint_id, 5)
    agent.lease_and_drop_reply()
    wait_for(lambda: _states(stack, ids) == ["leased"] * 5, 30, "the tasks to be leased")
    # Leased to this live session, so neither redelivered nor reclaimed...
    assert agent.lease()["tasks"] == []
    assert stack.client().get_endpoint_status(endpoint_id)["leased"] == 5
    # ...until the agent asks for what it holds.
    recovered = agent.lease(recover=True)
    assert sorted(t["task_id"] for t in recovered["tasks"]) == sorted(ids)
    assert all(t["attempt"] == 0 for t in recovered["tasks"])
    assert recovered["functions"], "function bodies come along with recovered tasks"
    agent.results([success(t["task_id"], serialize.dumps(t["task_id"]))
                   for t in recovered["tasks"]])
    assert [stack.client().get_result(t) for t in ids] == ids
    assert stack.client().get_endpoint_status(endpoint_id)["leased"] == 0


def test_long_poll_of_a_replaced_session_hands_its_tasks_back(stack):
    """An agent is SIGKILLed while its lease long-poll is blocked in the service; a new agent
    connects. Tasks submitted now must reach the new agent, not the dead one's long-poll."""
    endpoint_id, credential = _endpoint(stack, "replaced")
    old = FakeAgent(stack.service_url, credential)
    old.connect()
    replies = {}
    poll = threading.Thread(target=lambda: replies.setdefault(
        "old", old.post("/lease", {"max_tasks": 100, "wait": 20})))
    poll.start()
    wait_for(lambda: "old" not in replies, 5, "the long-poll to start")
    time.sleep(1.0)  # the long-poll is now blocked in Redis
    new = FakeAgent(stack.service_url, credential)
    new.connect()
    ids = _submit(stack, endpoint_id, 3)
    poll.join(30)
    assert replies["old"].status_code == 409, "the replaced session must be told to stop"
    leased = new.lease(wait=5)["tasks"]
    assert sorted(t["task_id"] for t in leased) == sorted(ids)
    assert all(t["attempt"] == 0 for t in leased), "no attempt is counted for the hand-back"
    new.results([success(t["task_id"], serialize.dumps(0)) for t in leased])
    assert _states(stack, ids) == ["success"] * 3


def test_duplicate_result_deliveries_are_idempotent(stack):
    endpoint_id, credential = _endpoint(stack, "duplicates")
    agent = FakeAgent(stack.service_url, credential)
    agent.connect()
    ids = _submit(stack, endpoint_id, 4)
    tasks = agent.lease(wait=5)["tasks"]
    assert len(tasks) == 4
    first = [success(t["task_id"], serialize.dumps("first")) for t in tasks]
    assert agent.results(first) == {"stored": 4, "duplicates": 0}
    assert agent.results(first) == {"stored": 0, "duplicates": 4}
    again = [success(t["task_id"], serialize.dumps("second")) for t in tasks]
    assert agent.results(again) == {"stored": 0, "duplicates": 4}
    client = stack.client()
    assert [client.get_result(t) for t in ids] == ["first"] * 4
    # The result stream carries each task once.
    group = client.get_task(ids[0])["task_group_id"]
    page = client.results_page(group, "0", wait=0)
    assert sorted(r["task_id"] for r in page["results"]) == sorted(ids)
    # Nothing is leased or queued any more, and nothing is redelivered.
    assert agent.lease(wait=0)["tasks"] == []
    status = client.get_endpoint_status(endpoint_id)
    assert (status["queued"], status["leased"]) == (0, 0)


def test_results_from_another_endpoint_are_ignored(stack):
    endpoint_id, credential = _endpoint(stack, "victim")
    _, other_credential = _endpoint(stack, "intruder")
    ids = _submit(stack, endpoint_id, 2)
    intruder = FakeAgent(stack.service_url, other_credential)
    intruder.connect()
    reply = intruder.results([success(t, serialize.dumps("forged")) for t in ids])
    assert reply == {"stored": 0, "duplicates": 2}
    assert _states(stack, ids) == ["waiting-for-endpoint"] * 2


def test_tiny_waits_do_not_block_forever(stack):
    """A long-poll of 0 < wait < 1 ms used to become Redis' BLOCK 0, which means "forever":
    the request hung and held one of the service's threads for good."""
    endpoint_id, credential = _endpoint(stack, "tiny-waits")
    group = str(uuid.uuid4())
    http = httpx.Client(base_url=f"{stack.service_url}/v1", timeout=15,
                        headers={"Authorization": f"Bearer {stack.token}"})
    for wait in ("0.0004", "1e-9", "5.8e-163"):
        response = http.get(f"/task_groups/{group}/results", params={"wait": wait})
        assert response.status_code == 200 and response.json()["results"] == []
    agent = FakeAgent(stack.service_url, credential)
    agent.http.timeout = httpx.Timeout(15)
    agent.connect()
    for wait in (0.0004, 1e-9):
        assert agent.lease(wait=wait)["tasks"] == []
