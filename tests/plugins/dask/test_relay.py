"""The service's Dask relay, driven with raw websockets: who may connect where, large messages,
and backpressure (the relay must not buffer what a slow endpoint has not read)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time

import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

pytestmark = pytest.mark.timeout(120)


def _ws(dask_stack, path: str, token: str | None) -> HTTPRequest:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return HTTPRequest(dask_stack.service_url.replace("http", "ws", 1) + path, headers=headers)


async def _status(request: HTTPRequest) -> int:
    try:
        conn = await websocket_connect(request)
    except HTTPClientError as exc:
        return exc.code
    conn.close()
    return 101


@pytest.fixture(scope="module")
def fake_endpoints(dask_stack):
    """Two registered endpoints (alice's) with no bridge running: the test plays the bridge."""
    return dask_stack.register("fake-a"), dask_stack.register("fake-b")


async def _control(dask_stack, credential: str, dashboard: str = ""):
    ctrl = await websocket_connect(_ws(dask_stack, "/v1/agent/control", credential))
    await ctrl.write_message(json.dumps({"op": "hello", "session": "s" * 16,
                                         "versions": {"python": "3"}, "dashboard": dashboard}))
    assert json.loads(await ctrl.read_message())["op"] == "welcome"
    return ctrl


def test_routes_refuse_the_wrong_principal(dask_stack, fake_endpoints):
    a, b = fake_endpoints
    user_path = f"/v1/endpoints/{a['endpoint_id']}/dask"

    async def main():
        # Nobody, a bad token, an endpoint credential, another user: refused before upgrade.
        assert await _status(_ws(dask_stack, user_path, None)) == 401
        assert await _status(_ws(dask_stack, user_path, "fcu_wrong")) == 401
        assert await _status(_ws(dask_stack, user_path, a["credential"])) == 403
        assert await _status(_ws(dask_stack, user_path, dask_stack.bob_token)) == 404
        # The owner, while the endpoint has no bridge: 503 with a clear reason.
        assert await _status(_ws(dask_stack, user_path, dask_stack.token)) == 503
        # A user cannot pose as an endpoint.
        assert await _status(_ws(dask_stack, "/v1/agent/control", dask_stack.token)) == 403
        ctrl = await _control(dask_stack, a["credential"])
        try:
            user = await websocket_connect(_ws(dask_stack, user_path, dask_stack.token))
            comm_id = json.loads(await ctrl.read_message())["comm_id"]
            # Only the endpoint asked may answer the dial, and nobody may guess another.
            dial = f"/v1/agent/dask/{comm_id}"
            assert await _status(_ws(dask_stack, dial, b["credential"])) == 404
            assert await _status(_ws(dask_stack, dial, dask_stack.token)) == 403
            assert await _status(_ws(dask_stack, "/v1/agent/dask/guess", a["credential"])) == 404
            ep = await websocket_connect(_ws(dask_stack, dial, a["credential"]))
            await user.write_message(b"ping", binary=True)
            assert await ep.read_message() == b"ping"
            await ep.write_message(b"pong", binary=True)
            assert await user.read_message() == b"pong"
            ep.close(code=1000, reason="done")
            assert await user.read_message() is None
            assert user.close_code == 1000
        finally:
            ctrl.close()

    asyncio.run(main())


def test_large_messages_with_backpressure(dask_stack, fake_endpoints):
    a, _ = fake_endpoints
    shard = 8 * 2**20  # distributed's websocket shard size
    messages = [os.urandom(shard) for _ in range(12)]  # ~96 MiB: more than every buffer on the way

    async def main():
        ctrl = await _control(dask_stack, a["credential"])
        try:
            user = await websocket_connect(
                _ws(dask_stack, f"/v1/endpoints/{a['endpoint_id']}/dask", dask_stack.token))
            comm_id = json.loads(await ctrl.read_message())["comm_id"]
            ep = await websocket_connect(
                _ws(dask_stack, f"/v1/agent/dask/{comm_id}", a["credential"]),
                max_message_size=2 * shard)

            async def send_all():
                for m in messages:
                    await user.write_message(m, binary=True)

            sender = asyncio.ensure_future(send_all())
            await asyncio.sleep(3)
            # The endpoint reads nothing yet: the sender must be held back, not buffered.
            assert not sender.done(), "the relay buffered everything: no backpressure"
            received = [await ep.read_message() for _ in messages]
            await asyncio.wait_for(sender, 60)
            assert [hashlib.sha256(m).digest() for m in received] == \
                   [hashlib.sha256(m).digest() for m in messages]
            # And back the other way.
            await ep.write_message(messages[0], binary=True)
            assert await user.read_message() == messages[0]
            user.close()
            assert await ep.read_message() is None
        finally:
            ctrl.close()

    asyncio.run(main())


def test_info_reports_bridge_and_versions(dask_stack):
    info = dask_stack.fed_client().request("GET", f"/endpoints/{dask_stack.endpoint_id}/dask/info")
    assert info["connected"] is True
    assert set(info["versions"]) == {"python", "dask", "distributed", "cloudpickle"}


def test_dashboard_requests_reach_the_endpoint_without_credentials(dask_stack, fake_endpoints):
    """The test plays the bridge of an endpoint with a dashboard: a browser's request arrives
    as bytes on a dial for the "dashboard" target, without the user's token or cookies, one
    request per connection; what the endpoint answers reaches the browser as it is."""
    import httpx

    _, b = fake_endpoints
    path = f"/console/dashboard/{b['endpoint_id']}"
    answer = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
              b"X-From: endpoint\r\n\r\nhello")

    async def main():
        ctrl = await _control(dask_stack, b["credential"], dashboard=path)
        try:
            headers = {"Authorization": f"Bearer {dask_stack.token}",
                       "Cookie": "fc_console=secret; other=1", "X-Test": "kept"}
            async with httpx.AsyncClient(base_url=dask_stack.service_url, timeout=30) as http:
                request = asyncio.ensure_future(http.get(path + "/status?a=1", headers=headers))
                dial = json.loads(await ctrl.read_message())
                assert dial["op"] == "dial" and dial["target"] == "dashboard"
                ep = await websocket_connect(
                    _ws(dask_stack, f"/v1/agent/dask/{dial['comm_id']}", b["credential"]))
                head = (await ep.read_message()).decode()
                assert head.startswith(f"GET {path}/status?a=1 HTTP/1.1\r\n")
                lowered = head.lower()
                assert "authorization" not in lowered and "cookie" not in lowered
                assert dask_stack.token not in head and "secret" not in head
                assert "x-test: kept" in lowered and "connection: close" in lowered
                await ep.write_message(answer, binary=True)
                ep.close(1000, "")
                reply = await asyncio.wait_for(request, 30)
            assert reply.status_code == 200 and reply.text == "hello"
            assert reply.headers["x-from"] == "endpoint"
        finally:
            ctrl.close()

    asyncio.run(main())
    # Once the bridge is gone: 503, saying why.
    deadline = time.monotonic() + 15
    while True:
        status = httpx.get(dask_stack.service_url + path + "/status",
                           headers={"Authorization": f"Bearer {dask_stack.token}"})
        if status.status_code != 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status.status_code == 503 and "no Dask bridge" in status.json()["message"]
