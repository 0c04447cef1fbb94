"""Console sessions on the real app and a real Valkey: cookie flags, CSRF, expiry, sign-out,
revoked tokens."""

from __future__ import annotations

import hashlib
import time

from fedcompute.service.auth import hash_token, issue_user_token
from fedcompute.service.console import session as console_session
from fedcompute.service.store import keys

from .conftest import csrf_of

HTTPS = {"base_url": "https://console.example.org"}
PROXIED_TLS = {"headers": {"X-Forwarded-Proto": "https"}}


def _cookie_header(reply, name: str) -> str:
    found = [c for c in reply.headers.getlist("Set-Cookie") if c.startswith(name + "=")]
    assert found, reply.headers
    return found[0]


def _session_key(client) -> str:
    sid = client.get_cookie(console_session.COOKIE, path="/console").value
    return keys.console_session(hashlib.sha256(sid.encode()).hexdigest())


def test_pages_need_a_session(service):
    client = service.client()
    reply = client.get("/console/groups")
    assert reply.status_code == 302
    assert reply.headers["Location"].startswith("/console/login?next=/console/groups")
    assert client.get("/console/groups/00000000-0000-4000-8000-000000000000/stats"
                      ).status_code == 401
    assert client.post("/console/logout").status_code == 401


def test_sign_in_sets_a_strict_cookie_and_lands_on_next(service):
    token = service.user("alice")
    client = service.client()
    form = client.get("/console/login?next=/console/tokens")
    login_cookie = _cookie_header(form, console_session.LOGIN_COOKIE)
    assert "HttpOnly" in login_cookie and "SameSite=Strict" in login_cookie
    reply = client.post("/console/login", data={"csrf": csrf_of(form.text), "token": token,
                                                "next": "/console/tokens"})
    assert reply.status_code == 303 and reply.headers["Location"] == "/console/tokens"
    cookie = _cookie_header(reply, console_session.COOKIE)
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie  # plain HTTP (a Secure cookie would never come back)
    page = client.get("/console/tokens")
    assert page.status_code == 200 and "alice" in page.text
    # The session is kept only as the hash of the cookie's value.
    sid = client.get_cookie(console_session.COOKIE, path="/console").value
    assert not service.store.redis.keys(f"*{sid}*")
    assert service.store.redis.exists(_session_key(client))


def test_cookie_is_secure_under_tls(service):
    token = service.user("alice")
    for environ in (HTTPS, PROXIED_TLS):
        client = service.client()
        form = client.get("/console/login", **environ)
        assert "Secure" in _cookie_header(form, console_session.LOGIN_COOKIE)
        reply = client.post("/console/login", data={"csrf": csrf_of(form.text),
                                                    "token": token}, **environ)
        assert reply.status_code == 303
        assert "Secure" in _cookie_header(reply, console_session.COOKIE)


def test_no_open_redirect_after_sign_in(service):
    token = service.user("alice")
    for target in ("https://evil.example/", "//evil.example/x", "/v2/whoami", "/\\evil"):
        client = service.client()
        form = client.get("/console/login")
        reply = client.post("/console/login", data={"csrf": csrf_of(form.text),
                                                    "token": token, "next": target})
        assert reply.headers["Location"] == "/console/endpoints", target


def test_bad_tokens_are_refused(service):
    service.user("alice")
    service.store.add_token(hash_token("fce_an-endpoint-credential"), "endpoint", "some-ep")
    client = service.client()
    for token, code in (("fcu_not-a-token", 401), ("fce_an-endpoint-credential", 401),
                        ("", 400)):
        form = client.get("/console/login")
        reply = client.post("/console/login", data={"csrf": csrf_of(form.text), "token": token})
        assert reply.status_code == code
        assert not any(c.startswith(console_session.COOKIE + "=")
                       for c in reply.headers.getlist("Set-Cookie"))
    assert client.get("/console/endpoints").status_code == 302


def test_sign_in_form_needs_its_csrf_cookie(service):
    token = service.user("alice")
    client = service.client()
    form = client.get("/console/login")
    other = service.client()  # a cross-site form post carries no (or another) login cookie
    assert other.post("/console/login", data={"csrf": csrf_of(form.text), "token": token}
                      ).status_code == 403
    assert client.post("/console/login", data={"csrf": "forged", "token": token}
                       ).status_code == 403


def test_every_post_checks_the_csrf_token(service):
    token = service.user("alice")
    endpoint = service.endpoint("alice")
    function = service.function("alice")
    group, ids = service.group("alice", endpoint, function, 3)
    client = service.client(token)
    posts = [f"/console/groups/{group}/cancel", f"/console/tasks/{ids[0]}/cancel",
             f"/console/endpoints/{endpoint}/sharing", f"/console/functions/{function}/sharing",
             "/console/tokens/revoke", "/console/logout"]
    for path in posts:
        for data in ({}, {"csrf": "wrong"}):
            reply = client.post(path, data={**data, "op": "public", "user": "bob"})
            assert reply.status_code == 403, path
    assert service.store.group_counts(group) == {"waiting-for-endpoint": 3}
    assert not service.store.get_endpoint(endpoint)["public"]
    # The right token from another site (a foreign Origin) is refused as well.
    csrf = csrf_of(client.get("/console/tokens").text)
    reply = client.post(f"/console/groups/{group}/cancel", data={"csrf": csrf},
                        headers={"Origin": "https://evil.example"})
    assert reply.status_code == 403
    reply = client.post(f"/console/groups/{group}/cancel", data={"csrf": csrf},
                        headers={"Origin": "http://localhost"})
    assert reply.status_code == 303
    assert service.store.group_counts(group) == {"cancelled": 3}


def test_sign_out_ends_the_session_for_good(service):
    token = service.user("alice")
    client = service.client(token)
    key = _session_key(client)
    cookie = client.get_cookie(console_session.COOKIE, path="/console").value
    reply = client.post("/console/logout", data={"csrf": csrf_of(client.get("/console/tokens").text)})
    assert reply.status_code == 303 and reply.headers["Location"] == "/console/login"
    assert not service.store.redis.exists(key)
    replay = service.client()
    replay.set_cookie(console_session.COOKIE, cookie, path="/console")
    assert replay.get("/console/endpoints").status_code == 302


def test_sessions_expire_when_idle_and_at_their_maximum_age(service):
    token = service.user("alice")
    client = service.client(token)
    key = _session_key(client)
    ttl = service.store.redis.ttl(key)
    assert console_session.IDLE_SECONDS - 5 <= ttl <= console_session.IDLE_SECONDS
    service.store.redis.expire(key, 100)
    assert client.get("/console/endpoints").status_code == 200
    assert service.store.redis.ttl(key) > 100  # each request restarts the idle clock
    service.store.redis.hset(key, "created", time.time() - console_session.MAX_SECONDS - 1)
    assert client.get("/console/endpoints").status_code == 302
    assert not service.store.redis.exists(key)
    client = service.client(token)
    service.store.redis.delete(_session_key(client))  # what the idle timeout does
    assert client.get("/console/endpoints").status_code == 302


def test_revoking_the_token_ends_its_sessions(service):
    token = service.user("alice")
    client = service.client(token)
    assert client.get("/console/endpoints").status_code == 200
    service.store.revoke_tokens("user", "alice")
    assert client.get("/console/endpoints").status_code == 302


def test_pages_carry_security_headers(service):
    client = service.client(service.user("alice"))
    for path in ("/console/endpoints", "/console/login"):
        reply = client.get(path)
        csp = reply.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert reply.headers["X-Frame-Options"] == "DENY"
        assert reply.headers["Cache-Control"] == "no-store"


def test_a_read_only_token_may_look_but_not_act(service):
    service.store.create_user("alice")
    token = issue_user_token(service.store, "alice", "viewer", scopes=["read"])
    endpoint = service.endpoint("alice")
    function = service.function("alice")
    group, ids = service.group("alice", endpoint, function, 3)
    client = service.client(token)
    page = client.get(f"/console/groups/{group}")
    assert page.status_code == 200 and 'id="cancel-group"' not in page.text
    assert 'id="share-add"' not in client.get(f"/console/endpoints/{endpoint}").text
    csrf = csrf_of(page.text)  # the sign-out form's
    posts = {f"/console/groups/{group}/cancel": {}, f"/console/tasks/{ids[0]}/cancel": {},
             f"/console/endpoints/{endpoint}/sharing": {"op": "public"},
             f"/console/functions/{function}/sharing": {"op": "public"},
             "/console/tokens/revoke": {"token_id": hash_token(token)}}
    for path, form in posts.items():
        reply = client.post(path, data={"csrf": csrf, **form})
        assert reply.status_code == 403, path
        assert "lacks the scope" in reply.text
    assert service.store.group_counts(group) == {"waiting-for-endpoint": 3}
    assert not service.store.get_endpoint(endpoint)["public"]


def test_a_session_ends_when_its_token_expires(service):
    service.store.create_user("alice")
    token = issue_user_token(service.store, "alice", expires=time.time() + 3600)
    client = service.client(token)
    key = _session_key(client)
    assert client.get("/console/endpoints").status_code == 200
    service.store.redis.hset(key, "expires", time.time() - 1)  # as if an hour went by
    assert client.get("/console/endpoints").status_code == 302
    assert not service.store.redis.exists(key)
