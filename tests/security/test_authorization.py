"""The authorization matrix: two users, private / shared / public functions, private and shared
endpoints, tasks, results, task groups and the Dask relay. Nobody reads or runs what is not
theirs or shared with them, and what is hidden is indistinguishable from what does not exist.
Each test runs twice (``users``): alice and bob with static tokens, and signed in through the
OpenID Connect provider (the same user names, so the same objects)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from fedcompute import Executor
from fedcompute.errors import NotFoundError, ServiceError
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from tests.reliability.helpers import wait_for

pytestmark = pytest.mark.timeout(300)


def triple(x):
    return 3 * x


def quadruple(x):
    return 4 * x


def negate(x):
    return -x


@pytest.fixture(scope="module")
def functions(sec, users):
    alice = users.alice()
    return {
        "private": alice.register_function(triple),
        "shared": alice.register_function(quadruple, shared_with=["bob"]),
        "public": alice.register_function(negate, public=True),
    }


def _status(call) -> int:
    try:
        call()
    except ServiceError as exc:
        return exc.status
    return 200


def test_functions(sec, users, functions):
    bob = users.bob()
    assert _status(lambda: bob.get_function(functions["private"])) == 404
    assert bob.get_function(functions["shared"])["owner"] == "alice"
    assert bob.get_function(functions["public"])["public"] is True
    for fid in functions.values():  # shared or public is not owned: no changes, no deletion
        assert _status(lambda f=fid: bob.share_function(f, public=True)) == 404
        assert _status(lambda f=fid: bob.delete_function(f)) == 404
    assert _status(lambda: bob.get_function(str(uuid.uuid4()))) == 404
    # The same body registered by bob is bob's own function, with its own id.
    assert bob.register_function(triple) != functions["private"]


def test_endpoints(sec, users):
    bob = users.bob()
    visible = {e["endpoint_id"] for e in bob.get_endpoints()}
    assert sec.shared_id in visible and sec.private_id not in visible
    assert bob.get_endpoint_status(sec.shared_id)["status"] == "online"
    for call in (lambda: bob.get_endpoint_status(sec.private_id),
                 lambda: bob.request("GET", f"/endpoints/{sec.private_id}"),
                 lambda: bob.update_endpoint(sec.private_id, public=True),
                 lambda: bob.update_endpoint(sec.shared_id, shared_with=["bob", "mallory"]),
                 lambda: bob.delete_endpoint(sec.private_id),
                 lambda: bob.delete_endpoint(sec.shared_id),
                 # nor take over alice's endpoint by re-registering its id (new credential)
                 lambda: bob.register_endpoint("mine", sec.shared_id)):
        assert _status(call) == 404
    assert users.alice().get_endpoint_status(sec.shared_id)["status"] == "online"


def test_running(sec, users, functions):
    bob = users.bob()
    # Bob's own functions, and alice's shared and public ones, run on the shared endpoint.
    with Executor(sec.shared_id, client=bob) as ex:
        assert ex.submit(triple, 2).result(timeout=120) == 6
    batch_ids = {}
    for name in ("shared", "public"):
        batch_ids[name] = bob.run(5, endpoint_id=sec.shared_id, function_id=functions[name])
    expected = {"shared": 20, "public": -5}
    for name, tid in batch_ids.items():
        wait_for(lambda t=tid: not bob.get_task(t)["pending"], 120, f"bob's {name} task")
        assert bob.get_result(tid) == expected[name]
    # Alice's private function: unknown to bob, wherever he runs it.
    with pytest.raises(NotFoundError, match="function"):
        bob.run(5, endpoint_id=sec.shared_id, function_id=functions["private"])
    # Alice's private endpoint: unknown to bob, whatever function.
    with pytest.raises(NotFoundError, match="endpoint"):
        bob.run(5, endpoint_id=sec.private_id, function_id=functions["public"])


def test_tasks_results_and_groups(sec, users, functions):
    alice, bob = users.alice(), users.bob()
    batch = alice.create_batch()
    alice_ids = [batch.add(functions["private"], (i,)) for i in range(3)]
    group = alice.batch_run(sec.private_id, batch)["task_group_id"]
    wait_for(lambda: not any(r["pending"] for r in alice.get_batch_result(alice_ids).values()),
             120, "alice's tasks")
    for tid in alice_ids:
        for call in (lambda t=tid: bob.get_task(t), lambda t=tid: bob.get_result(t),
                     lambda t=tid: bob.cancel_task(t)):
            assert _status(call) == 404
    assert all(r["status"] == "unknown" for r in bob.get_batch_result(alice_ids).values())
    assert _status(lambda: bob.get_task_group(group)) == 404
    assert _status(lambda: bob.results_page(group, "0", wait=0)) == 404
    # Bob cannot slip tasks into alice's task group, nor reuse her task ids.
    bob_fid = bob.register_function(triple)
    steal_group = bob.create_batch(task_group_id=group)
    steal_group.add(bob_fid, (1,))
    assert _status(lambda: bob.batch_run(sec.shared_id, steal_group)) == 409
    steal_id = bob.create_batch()
    steal_id.add(bob_fid, (1,))
    steal_id.tasks[0]["task_id"] = alice_ids[0]
    assert _status(lambda: bob.batch_run(sec.shared_id, steal_id)) == 409
    assert alice.get_result(alice_ids[0]) == 0  # untouched
    # A task bob runs on alice's shared endpoint is bob's: the endpoint's owner cannot read it.
    bob_task = bob.run(7, endpoint_id=sec.shared_id, function_id=bob_fid)
    wait_for(lambda: not bob.get_task(bob_task)["pending"], 120, "bob's task")
    assert bob.get_result(bob_task) == 21
    assert _status(lambda: alice.get_task(bob_task)) == 404
    assert alice.get_batch_result([bob_task])[bob_task]["status"] == "unknown"


# --- the Dask relay ----------------------------------------------------------------------


def _ws_status(sec, path: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = HTTPRequest(sec.url.replace("http", "ws", 1) + path, headers=headers,
                          request_timeout=30)

    async def main() -> int:
        try:
            conn = await websocket_connect(request)
        except HTTPClientError as exc:
            return exc.code
        conn.close()
        return 101

    return asyncio.run(main())


def test_dask_relay(sec, users, functions):
    alice, bob = users.alice(), users.bob()
    info = f"/endpoints/{sec.shared_id}/dask/info"
    wait_for(lambda: alice.request("GET", info)["connected"], 120, "the Dask bridge")
    assert bob.request("GET", info)["connected"] is True
    assert _status(lambda: bob.request("GET", f"/endpoints/{sec.private_id}/dask/info")) == 404
    # Who may open a Dask comm to which endpoint.
    private, shared = (f"/v1/endpoints/{e}/dask" for e in (sec.private_id, sec.shared_id))
    credential = alice.register_endpoint("dask-probe")["credential"]
    assert _ws_status(sec, shared, None) == 401
    assert _ws_status(sec, shared, "fcu_forged") == 401
    assert _ws_status(sec, shared, credential) == 403  # an endpoint is not a user
    assert _ws_status(sec, private, users.bob_token()) == 404
    assert _ws_status(sec, shared, users.bob_token()) == 101
    assert _ws_status(sec, private, users.alice_token()) == 101
    # A user cannot pose as an endpoint's bridge.
    assert _ws_status(sec, "/v1/agent/control", users.bob_token()) == 403
    assert _ws_status(sec, f"/v1/agent/dask/{uuid.uuid4()}", users.bob_token()) == 403
    # An endpoint restricted to allowed_functions refuses Dask (arbitrary code) to everyone.
    restricted = alice.register_endpoint("restricted", shared_with=["bob"],
                                         allowed_functions=[functions["public"]])
    path = f"/v1/endpoints/{restricted['endpoint_id']}/dask"
    assert _ws_status(sec, path, users.alice_token()) == 403
    assert _ws_status(sec, path, users.bob_token()) == 403
