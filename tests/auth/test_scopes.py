"""Scopes and expiry: every route declares the scope it needs, a token without it gets 403
naming the scope, an expired static token gets 401 saying so; static tokens made through the
CLI (``fedcompute user create NAME --scope ... --expires ...``) and OIDC tokens (their
``scope`` claim) alike."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import httpx
import pytest
from fedcompute.service.openapi import openapi_document

from tests.reliability.helpers import wait_for

pytestmark = pytest.mark.timeout(300)

#: The scope each user route needs (the Dask comm websocket, not in the document: submit).
ROUTE_SCOPES = {
    ("POST", "/v1/functions"): "submit",
    ("GET", "/v1/functions/{function_id}"): "read",
    ("PATCH", "/v1/functions/{function_id}"): "manage",
    ("DELETE", "/v1/functions/{function_id}"): "manage",
    ("POST", "/v1/endpoints"): "endpoint",
    ("GET", "/v1/endpoints"): "read",
    ("GET", "/v1/endpoints/{endpoint_id}"): "read",
    ("PATCH", "/v1/endpoints/{endpoint_id}"): "manage",
    ("DELETE", "/v1/endpoints/{endpoint_id}"): "manage",
    ("GET", "/v1/endpoints/{endpoint_id}/status"): "read",
    ("GET", "/v1/endpoints/{endpoint_id}/dask/info"): "read",
    ("POST", "/v1/tasks"): "submit",
    ("POST", "/v1/tasks/get"): "read",
    ("GET", "/v1/tasks/{task_id}"): "read",
    ("POST", "/v1/tasks/{task_id}/cancel"): "submit",
    ("POST", "/v1/tasks/cancel"): "submit",
    ("GET", "/v1/task_groups/{group}"): "read",
    ("GET", "/v1/task_groups/{group}/results"): "read",
    ("POST", "/v1/task_groups/{group}/cancel"): "submit",
}
#: Routes any valid token may call.
ANY_TOKEN = {("GET", "/v1/whoami")}


def _user_operations() -> list[tuple[str, str]]:
    doc = openapi_document()
    return [(method.upper(), path) for path, item in doc["paths"].items()
            for method, op in item.items()
            if op.get("security") and not path.startswith("/v1/agent/")]


def test_every_user_route_declares_a_scope():
    unmapped = set(_user_operations()) - ANY_TOKEN - set(ROUTE_SCOPES)
    assert not unmapped, f"new routes: add the scope each needs to ROUTE_SCOPES: {unmapped}"


def _call(stack, token: str, method: str, path: str) -> httpx.Response:
    url = stack.service_url + path.format(function_id=uuid.uuid4(), endpoint_id=uuid.uuid4(),
                                          task_id=uuid.uuid4(), group=uuid.uuid4())
    kwargs = {"json": {}} if method in ("POST", "PATCH") else {}
    return httpx.request(method, url, timeout=30, **kwargs,
                         headers={"Authorization": f"Bearer {token}",
                                  "Accept": "application/json"})


def _token(stack, *args: str) -> tuple[str, str]:
    done = subprocess.run([sys.executable, "-m", "fedcompute.cli", "user", "create", *args],
                          env=stack.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip(), done.stderr


def test_a_token_without_the_scope_gets_403_naming_it(auth_stack, idp):
    reader, _ = _token(auth_stack, "sam", "--scope", "read")
    # No fedcompute scope at all (and a lifetime longer than this test's).
    nothing = idp.mint("sam", scope="openid profile", exp=int(time.time()) + 600)
    everything, _ = _token(auth_stack, "sam", "--scope", "admin")
    for (method, path), scope in ROUTE_SCOPES.items():
        tokens = [nothing] if scope == "read" else [reader, nothing]
        for token in tokens:
            reply = _call(auth_stack, token, method, path)
            assert reply.status_code == 403, (method, path, reply.text)
            assert f"lacks the scope '{scope}'" in reply.json()["message"], (method, path)
        # With the scope (admin grants all), the same request gets past authorization.
        reply = _call(auth_stack, everything, method, path)
        assert "lacks the scope" not in reply.text, (method, path, reply.text)
        assert reply.status_code in (200, 201, 400, 404), (method, path, reply.text)
    for token in (reader, nothing):
        assert _call(auth_stack, token, "GET", "/v1/whoami").status_code == 200


def test_user_create_with_scopes_and_expiry(auth_stack):
    token, note = _token(auth_stack, "tess", "--scope", "submit", "--scope", "read",
                         "--expires", "30d", "--label", "nightly")
    assert "scopes submit, read" in note and "expires 20" in note
    who = httpx.get(f"{auth_stack.service_url}/v1/whoami", timeout=30,
                    headers={"Authorization": f"Bearer {token}"}).json()
    assert who["name"] == "tess" and who["scopes"] == ["submit", "read"]
    assert who["expires"] == pytest.approx(time.time() + 30 * 86400, abs=120)
    listing = auth_stack.cli("user", "list", "--tokens")
    assert "scopes=read,submit" in listing and "nightly" in listing
    # Without --scope: all user scopes, never expiring (as tokens always were).
    plain, note = _token(auth_stack, "tess")
    assert "all user scopes; expires never" in note
    who = httpx.get(f"{auth_stack.service_url}/v1/whoami", timeout=30,
                    headers={"Authorization": f"Bearer {plain}"}).json()
    assert who["scopes"] == ["submit", "read", "manage", "endpoint"] and who["expires"] is None
    for bad, message in ((["--expires", "soon"], "invalid duration 'soon'"),
                         (["--expires", "0s"], "more than 0 s"),
                         (["--scope", "root"], "'root' is not one of")):
        done = subprocess.run([sys.executable, "-m", "fedcompute.cli", "user", "create",
                               "tess", *bad], env=auth_stack.env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 2 and message in done.stderr, done.stderr


def test_an_expired_static_token_gets_401_saying_so(auth_stack):
    token, _ = _token(auth_stack, "uma", "--expires", "3s")
    headers = {"Authorization": f"Bearer {token}"}
    url = f"{auth_stack.service_url}/v1/endpoints"
    assert httpx.get(url, headers=headers, timeout=30).status_code == 200
    reply = wait_for(lambda: (r := httpx.get(url, headers=headers, timeout=30)).status_code
                     == 401 and r, 30, "the token to expire")
    assert "token expired at" in reply.json()["message"]
    # An SDK Client says the same.
    from fedcompute import Client
    from fedcompute.errors import AuthError

    with pytest.raises(AuthError, match="expired"):
        Client(auth_stack.service_url, token, retries=0).get_endpoints()
