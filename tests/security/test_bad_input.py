"""Hostile and broken input gets a 4xx with a clear message, never a 5xx, and changes nothing:
malformed bodies, wrong content types, huge headers and URLs, oversized requests, payloads,
functions and batches, invalid UUIDs, unicode."""

from __future__ import annotations

import threading
import uuid
from collections import Counter

import httpx
import msgpack
import pytest
from fedcompute import serialize
from fedcompute.protocol import MSGPACK

from tests.reliability.helpers import running_stack

pytestmark = pytest.mark.timeout(300)

MAX_REQUEST = 1024 * 1024
MAX_PAYLOAD = 64 * 1024
MAX_FUNCTION = 32 * 1024
MAX_BATCH = 100


def noop():
    return None


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    limits = {"FEDCOMPUTE_MAX_REQUEST_BYTES": MAX_REQUEST,
              "FEDCOMPUTE_MAX_PAYLOAD_BYTES": MAX_PAYLOAD,
              "FEDCOMPUTE_MAX_FUNCTION_BYTES": MAX_FUNCTION,
              "FEDCOMPUTE_MAX_BATCH_TASKS": MAX_BATCH}
    with running_stack(tmp_path_factory.mktemp("bad-input"), env=limits,
                       endpoint=False) as stack:
        client = stack.client()
        endpoint = client.register_endpoint("target")["endpoint_id"]
        function = client.register_function(noop)
        http = httpx.Client(base_url=f"{stack.service_url}/v1", timeout=60,
                            headers={"Authorization": f"Bearer {stack.token}"})
        yield stack, http, endpoint, function


def _task(function: str, payload: bytes = b"F1\x03\x0b") -> dict:
    return {"task_id": str(uuid.uuid4()), "function_id": function, "payload": payload}


def _expect(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, (response.status_code, response.text[:300])
    if response.headers.get("content-type", "").startswith("application/json"):
        body = response.json()
        assert set(body) == {"error", "message"}
        text = body["message"]
    else:  # refused by gunicorn before the app: its own plain page
        text = response.text
    for word in words:
        assert word in text, (word, text[:300])


def test_malformed_bodies(env):
    _, http, endpoint, function = env
    json_ = {"Content-Type": "application/json"}
    cases = [
        (b'{"endpoint_id": ', "Invalid JSON"),
        (b"[1, 2, 3]", "invalid request"),
        (b'"just a string"', "invalid request"),
        (b"{}", "endpoint_id: Field required"),
        (b"", "empty body"),
        (b'{"endpoint_id": "' + endpoint.encode() + b'", "tasks": []}', "tasks"),
        (b'{"endpoint_id": "' + endpoint.encode() + b'", "tasks": [{"task_id": 1}]}',
         "tasks.0.task_id"),
        (b'{"endpoint_id": "' + endpoint.encode() + b'", "tasks": [], "admin": true}',
         "admin: Extra inputs are not permitted"),
        (b'{"function_name": "\xff\xfe"}', "Invalid JSON"),  # not UTF-8
        (b'{"function_name": "f", "function_body": "%%%not base64"}', "function_body"),
    ]
    for body, words in cases:
        path = "/functions" if b"function_name" in body else "/tasks"
        _expect(http.post(path, content=body, headers=json_), 400, words)
    for body in (b"\xc1", b"\x92\x01", msgpack.packb([1, 2]), b"\xdd\xff\xff\xff\xff"):
        response = http.post("/tasks", content=body, headers={"Content-Type": MSGPACK})
        _expect(response, 400, "")
    _expect(http.post("/tasks", content=b"\xc1", headers={"Content-Type": MSGPACK}), 400,
            "malformed msgpack body")


def test_wrong_content_types(env):
    _, http, _, _ = env
    for ctype in ("text/plain", "application/xml", "multipart/form-data; boundary=x",
                  "application/x-www-form-urlencoded", "image/png"):
        response = http.post("/tasks", content=b"{}", headers={"Content-Type": ctype})
        _expect(response, 415, "unsupported Content-Type", "application/json",
                "application/msgpack")


def test_huge_headers_and_urls(env):
    stack, http, _, _ = env
    _expect(http.get("/whoami", headers={"X-Big": "a" * 20_000}), 431,
            "Request Header Fields Too Large")
    _expect(http.get("/whoami", headers={f"X-H{i}": "v" for i in range(150)}), 431,
            "Request Header Fields Too Large")
    _expect(http.get("/tasks/" + "a" * 9000), 414, "URI Too Long")
    bearer = httpx.get(f"{stack.service_url}/v1/whoami", timeout=30,
                       headers={"Authorization": "Bearer " + "t" * 5000})
    _expect(bearer, 401, "invalid token")


def test_oversized_requests_payloads_functions_and_batches(env):
    _, http, endpoint, function = env
    json_ = {"Content-Type": "application/json"}
    big = http.post("/tasks", content=b"x" * (MAX_REQUEST + 1), headers=json_)
    _expect(big, 413, f"the limit is {MAX_REQUEST} bytes", "max_request_bytes")
    payload = serialize._HEADER + b"p" * MAX_PAYLOAD
    body = msgpack.packb({"endpoint_id": endpoint, "tasks": [_task(function, payload)]})
    _expect(http.post("/tasks", content=body, headers={"Content-Type": MSGPACK}), 413,
            f"payload is {len(payload)} bytes", f"the limit is {MAX_PAYLOAD} bytes",
            "max_payload_bytes")
    body = msgpack.packb({"function_name": "huge", "function_body": b"f" * (MAX_FUNCTION + 1)})
    _expect(http.post("/functions", content=body, headers={"Content-Type": MSGPACK}), 413,
            f"the limit is {MAX_FUNCTION} bytes")
    tasks = [_task(function) for _ in range(MAX_BATCH + 1)]
    body = msgpack.packb({"endpoint_id": endpoint, "tasks": tasks})
    _expect(http.post("/tasks", content=body, headers={"Content-Type": MSGPACK}), 413,
            f"batch is {MAX_BATCH + 1} tasks", f"the limit is {MAX_BATCH} tasks (max_batch_tasks)")
    _expect(http.post("/tasks/get", json={"task_ids": [str(uuid.uuid4())] * 10_001}), 400,
            "task_ids")
    # None of it was stored.
    assert http.get(f"/endpoints/{endpoint}/status").json()["queued"] == 0


def test_invalid_uuids(env):
    _, http, endpoint, function = env
    for path, what in (("/tasks/not-a-uuid", "task id"), ("/functions/1234", "function id"),
                       ("/endpoints/x/status", "endpoint id"),
                       ("/task_groups/%27%3B--/results", "task group id"),
                       (f"/tasks/{uuid.uuid4()}x", "task id")):
        _expect(http.get(path), 400, f"invalid {what}", "expected a UUID")
    body = {"endpoint_id": "not-a-uuid", "tasks": [_task(function)]}
    _expect(http.post("/tasks", json={**body, "tasks": [{**_task(function), "payload": "AA=="}]}),
            400, "endpoint_id")
    body = {"endpoint_id": endpoint, "tasks": [{**_task(function), "task_id": "1-2-3",
                                                "payload": "AA=="}]}
    _expect(http.post("/tasks", json=body), 400, "tasks.0.task_id")
    group = str(uuid.uuid4())
    _expect(http.get(f"/task_groups/{group}/results", params={"cursor": "drop table"}), 400,
            "invalid cursor")
    _expect(http.get(f"/task_groups/{group}/results", params={"wait": "forever"}), 400,
            "wait must be a number")


def test_unicode(env):
    stack, http, endpoint, _ = env
    client = stack.client()
    name = "fünf-\u202e-\U0001f9ea-日本語-\u0000-end"
    fid = client.register_function(noop, function_name=name, description="π ≈ 3.14159 🥧")
    info = client.get_function(fid)
    assert info["function_name"] == name and info["description"] == "π ≈ 3.14159 🥧"
    # Names of users and endpoints are identifiers: refused with a clear message.
    _expect(http.post("/endpoints", json={"name": "ëndpoint"}), 400, "name")
    _expect(http.patch(f"/functions/{fid}", json={"shared_with": ["bøb"]}), 400, "shared_with")
    _expect(http.get("/tasks/%F0%9F%A7%AA"), 400, "invalid task id")
    _expect(http.get("/tasks/" + "\u0661" * 8 + "-1111-1111-1111-111111111111"), 400,
            "invalid task id")


def test_methods_and_routes(env):
    _, http, _, _ = env
    response = http.put("/tasks")
    _expect(response, 405, "not allowed")
    assert response.headers["Allow"]
    _expect(http.get("/no/such/route"), 404, "not found")


def test_oversized_bodies_always_get_their_413(env):
    """Refused unread, an oversized body used to make the server reset the connection now and
    then, so the client saw "server disconnected" instead of the 413 and its message (and the
    SDK, taking it for an outage, would retry forever). Many at once, from several clients."""
    stack, _, _, _ = env
    outcomes: Counter = Counter()
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {stack.token}",
                                                "Content-Type": "application/json"}) as http:
            for size in (MAX_REQUEST + 1, 4 * MAX_REQUEST, 16 * MAX_REQUEST) * 3:
                try:
                    response = http.post(f"{stack.service_url}/v1/tasks", content=b"x" * size)
                    outcome = (response.status_code,
                               f"the limit is {MAX_REQUEST} bytes" in response.text)
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                with lock:
                    outcomes[outcome] += 1

    threads = [threading.Thread(target=client) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes == {(413, True): 12 * 9}, outcomes
