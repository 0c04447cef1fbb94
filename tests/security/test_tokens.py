"""Tokens and credentials: revocation takes effect at once; a user token and an endpoint
credential are not interchangeable on any operation; tokens never appear in logs; they are
stored only as hashes (in Redis and in its append-only file on disk)."""

from __future__ import annotations

import hashlib
import json
import re
import stat
import uuid

import httpx
import pytest
from fedcompute import Client
from fedcompute.errors import AuthError
from fedcompute.protocol import MSGPACK, packb

from tests.reliability.helpers import service_redis

pytestmark = pytest.mark.timeout(300)

#: Every token and credential this module sees, checked by the log and storage scans.
SEEN: set[str] = set()


def _http(sec, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=sec.url, headers=headers, timeout=30)


def _all_known_tokens(sec) -> set[str]:
    tokens = {sec.stack.token, sec.bob_token, *SEEN}
    for path in (sec.stack.home / "endpoints").glob("*/credential.json"):
        tokens.add(json.loads(path.read_text())["credential"])
    return tokens


def test_revoked_tokens_are_refused_at_once(sec):
    first, second = sec.stack.create_user("carol"), sec.stack.create_user("carol")
    SEEN.update((first, second))
    for token in (first, second):
        who = Client(sec.url, token).whoami()
        assert (who["kind"], who["name"], who["via"]) == ("user", "carol", "token")
    assert sec.stack.cli("user", "revoke", "carol", "--token", first) == "revoked 1 token"
    with pytest.raises(AuthError, match="invalid or revoked token"):
        Client(sec.url, first, retries=0).whoami()
    assert Client(sec.url, second).whoami()["name"] == "carol"  # the other one still works
    assert "revoked 1 token(s)" in sec.stack.cli("user", "revoke", "carol")
    with pytest.raises(AuthError):
        Client(sec.url, second, retries=0).get_endpoints()


def test_rotated_and_deleted_endpoint_credentials_are_refused_at_once(sec):
    alice = sec.alice()
    reg = alice.register_endpoint("rotating")
    again = alice.register_endpoint("rotating", reg["endpoint_id"])  # re-register: rotate
    SEEN.update((reg["credential"], again["credential"]))
    hello = packb({"session": uuid.uuid4().hex})
    post = {"content": hello, "headers": {"Content-Type": MSGPACK}}
    assert _http(sec, reg["credential"]).post("/v1/agent/connect", **post).status_code == 401
    assert _http(sec, again["credential"]).post("/v1/agent/connect", **post).status_code == 200
    alice.delete_endpoint(reg["endpoint_id"])
    assert _http(sec, again["credential"]).post("/v1/agent/connect", **post).status_code == 401


def _operations(sec) -> list[tuple[str, str]]:
    document = _http(sec, None).get("/openapi.json").json()
    ops = []
    for path, item in document["paths"].items():
        for method, op in item.items():
            if op.get("security"):
                ops.append((method.upper(), re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path)))
    return ops


def test_user_token_and_endpoint_credential_are_not_interchangeable(sec):
    credential = sec.alice().register_endpoint("impostor")["credential"]
    SEEN.add(credential)
    user, endpoint = _http(sec, sec.stack.token), _http(sec, credential)
    checked = 0
    for method, path in _operations(sec):
        if path.endswith("/whoami"):
            continue  # both may ask who they are
        agent_route = path.startswith("/v1/agent/")
        wrong = user if agent_route else endpoint
        response = wrong.request(method, path, json={} if method in ("POST", "PATCH") else None)
        assert response.status_code == 403, (method, path, response.status_code)
        needed = "an endpoint credential" if agent_route else "a user token"
        assert needed in response.json()["message"]
        checked += 1
    assert checked >= 20
    assert endpoint.get("/v1/whoami").json()["kind"] == "endpoint"


def _redis_values(r) -> list[bytes]:
    """Every key and every value stored in the service's Redis."""
    out: list[bytes] = []
    for key in r.scan_iter(count=1000):
        out.append(key)
        kind = r.type(key)
        if kind == b"string":
            out.append(r.get(key) or b"")
        elif kind == b"hash":
            for field, value in r.hgetall(key).items():
                out += [field, value]
        elif kind == b"set":
            out += list(r.smembers(key))
        elif kind == b"list":
            out += r.lrange(key, 0, -1)
        elif kind == b"zset":
            out += r.zrange(key, 0, -1)
        elif kind == b"stream":
            for _, fields in r.xrange(key):
                for field, value in fields.items():
                    out += [field, value]
    return out


def test_tokens_are_stored_hashed_only(sec):
    tokens = _all_known_tokens(sec)
    revoked = {t for t in tokens if not _authenticates(sec, t)}
    r = service_redis(sec.stack)
    values = _redis_values(r)
    assert len(values) > 100
    blob = b"\n".join(values)
    for token in tokens:
        assert token.encode() not in blob, "a token is stored in clear in Redis"
        if token not in revoked:
            assert r.exists(f"fc:token:{hashlib.sha256(token.encode()).hexdigest()}")
    # ...nor in the append-only file Valkey keeps on disk.
    aof = b"".join(p.read_bytes() for p in (sec.stack.home / "service").rglob("*.aof"))
    assert aof, "no append-only file found"
    for token in tokens:
        assert token.encode() not in aof, "a token is written in clear to the AOF"
    # The secrets on disk are readable by their owner only.
    for path in [*(sec.stack.home / "endpoints").glob("*/credential.json"),
                 sec.stack.home / "service" / "valkey.password"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def _authenticates(sec, token: str) -> bool:
    return _http(sec, token).get("/v1/whoami").status_code == 200


def test_tokens_are_never_logged(sec):
    tokens = _all_known_tokens(sec)
    # Give the service every reason to log a token: refused, malformed and oversized headers.
    for token in tokens:
        for value in (f"Bearer {token}x", f"Basic {token}", f"Bearer  {token} extra",
                      f"Bearer {token}" + "A" * 300, f"Bearer {token}" + "B" * 20000):
            try:
                httpx.get(f"{sec.url}/v1/whoami", headers={"Authorization": value}, timeout=30)
            except httpx.HTTPError:
                pass
    password = (sec.stack.home / "service" / "valkey.password").read_text().strip()
    logs = [p for p in sec.stack.home.rglob("*") if p.is_file()
            and (p.suffix in (".log", ".out") or p.name.endswith(".log.1"))]
    assert any("api.log" == p.name for p in logs) and any("endpoint.log" == p.name for p in logs)
    text = "\n".join(p.read_text(errors="replace") for p in logs)
    for secret in (*tokens, password):
        assert secret not in text, "a secret was written to a log"
    assert not re.search(r"fc[ue]_[A-Za-z0-9_-]{20,}", text), "something token-like is logged"
