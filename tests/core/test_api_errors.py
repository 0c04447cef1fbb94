"""Issue 2's error cases through the real service: wrong token 401, someone else's task or
endpoint 404 (never revealed), oversized payload 413 naming the limit, malformed JSON 400."""

from __future__ import annotations

import uuid

import httpx
import pytest
from fedcompute import Client, Executor
from fedcompute.errors import AuthError, NotFoundError, PayloadTooLarge


def add(a, b):
    return a + b


@pytest.fixture(scope="module")
def bob(fed_stack):
    return fed_stack.client(fed_stack.create_user("bob-core"))


def _http(fed_stack, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=f"{fed_stack.service_url}/v1", headers=headers, timeout=60)


def test_wrong_or_missing_token_is_401(fed_stack):
    for token in (None, "fcu_not-a-real-token", fed_stack.token + "x"):
        response = _http(fed_stack, token).get("/endpoints")
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert "token" in response.json()["message"]
    with pytest.raises(AuthError, match="invalid or revoked token"):
        Client(fed_stack.service_url, "fcu_wrong").get_endpoints()


def test_another_users_task_and_endpoint_are_not_found(fed_stack, bob):
    alice = fed_stack.client()
    fid = alice.register_function(add)
    task_id = alice.run(1, 2, endpoint_id=fed_stack.endpoint_id, function_id=fid)
    assert alice.get_task(task_id)["task_id"] == task_id
    # Bob can neither see nor touch alice's task, and cannot tell it from a missing one.
    for call in (lambda: bob.get_task(task_id), lambda: bob.get_result(task_id),
                 lambda: bob.cancel_task(task_id),
                 lambda: bob.get_endpoint_status(fed_stack.endpoint_id),
                 lambda: bob.get_task(str(uuid.uuid4()))):
        with pytest.raises(NotFoundError):
            call()
    assert bob.get_batch_result([task_id])[task_id]["status"] == "unknown"
    # ...nor run anything on alice's (unshared) endpoint.
    bob_fid = bob.register_function(add)
    with pytest.raises(NotFoundError, match="endpoint"):
        bob.run(1, 2, endpoint_id=fed_stack.endpoint_id, function_id=bob_fid)
    assert fed_stack.endpoint_id not in {e["endpoint_id"] for e in bob.get_endpoints()}


def test_oversized_payload_is_413_naming_the_limit(fed_stack):
    client = fed_stack.client()
    with Executor(fed_stack.endpoint_id, client=client) as ex:
        future = ex.submit(len, b"x" * (10 * 1024 * 1024 + 1))
        with pytest.raises(PayloadTooLarge, match=r"the limit is 10485760 bytes"):
            future.result(timeout=120)
        assert ex.submit(add, 1, 2).result(timeout=60) == 3  # the executor carries on


def test_malformed_json_is_400(fed_stack):
    http = _http(fed_stack, fed_stack.token)
    response = http.post("/tasks", content=b'{"endpoint_id": ', headers={
        "Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"] == "bad_request"
    assert "invalid request" in response.json()["message"]
    response = http.post("/functions", json={"function_name": "f"})
    assert response.status_code == 400
    assert "function_body" in response.json()["message"]
