"""OpenID Connect access tokens at the service, against the real test providers: what is
accepted (and who it makes the caller), what is refused and with which message, key rotation
followed (with a rate-limited JWKS refetch), and opaque tokens introspected (RFC 7662)."""

from __future__ import annotations

import time
import uuid

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fedcompute.service.oidc import IssuerConfig, OIDCConfig, TokenRejected, _Issuer

from tests.reliability.helpers import wait_for

pytestmark = pytest.mark.timeout(300)


def _get(stack, token: str, path: str = "/v1/whoami") -> httpx.Response:
    return httpx.get(f"{stack.service_url}{path}", timeout=30,
                     headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})


def _refused(stack, token: str, message: str) -> None:
    reply = _get(stack, token)
    assert reply.status_code == 401, reply.text
    assert message in reply.json()["message"], reply.json()["message"]
    assert reply.headers["WWW-Authenticate"] == "Bearer"


def test_a_valid_token_names_the_user_its_groups_and_scopes(auth_stack, idp):
    token = idp.mint("erin", scope="openid fedcompute:submit", groups=["lab", "bad group"])
    who = _get(auth_stack, token).json()
    assert who["name"] == "erin" and who["kind"] == "user" and who["via"] == "oidc"
    assert who["issuer"] == idp.issuer
    assert who["groups"] == ["lab"]  # "bad group" is no valid group name: dropped
    assert who["scopes"] == ["submit"]
    assert who["expires"] == pytest.approx(time.time() + 6, abs=3)
    # The user exists from its first request on.
    assert "erin" in auth_stack.cli("user", "list").split()


def test_refusals_say_why(auth_stack, idp):
    now = int(time.time())
    _refused(auth_stack, idp.mint("erin", exp=now - 60, iat=now - 120, nbf=now - 120),
             "token expired")
    _refused(auth_stack, idp.mint("erin", nbf=now + 600), "not yet valid")
    _refused(auth_stack, idp.mint("erin", aud="another-service"),
             "audience is not this service (expected fedcompute)")
    _refused(auth_stack, idp.mint("erin", iss="https://idp.elsewhere.example"),
             "issuer 'https://idp.elsewhere.example' is not accepted")
    _refused(auth_stack, idp.mint("erin", exp=None), "lacks the 'exp' claim")
    _refused(auth_stack, idp.mint("erin", preferred_username="not a name!"),
             "is not a valid fedcompute user name")


def _claims(idp, user: str = "erin") -> dict:
    now = int(time.time())
    return {"iss": idp.issuer, "aud": "fedcompute", "sub": user, "preferred_username": user,
            "exp": now + 60, "iat": now, "scope": "fedcompute"}


def test_forged_unknown_key_and_algorithm_tricks_are_refused(auth_stack, idp):
    kid = idp.stats()["kids"][0]
    mallory = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    # The provider's kid, another key: a forged signature.
    forged = jwt.encode(_claims(idp), mallory, algorithm="RS256", headers={"kid": kid})
    _refused(auth_stack, forged, "signature is invalid")
    # A payload changed after signing.
    good = idp.mint("erin")
    head, _, sig = good.split(".")
    tampered = jwt.encode(_claims(idp, "alice"), mallory, algorithm="RS256").split(".")[1]
    _refused(auth_stack, f"{head}.{tampered}.{sig}", "signature is invalid")
    # A key the provider never published.
    unknown = jwt.encode(_claims(idp), mallory, algorithm="RS256",
                         headers={"kid": f"mallory-{uuid.uuid4().hex[:6]}"})
    _refused(auth_stack, unknown, "unknown key")
    # HMAC "signed" with the public key, and no signature at all: algorithms are pinned.
    _refused(auth_stack, jwt.encode(_claims(idp), "s" * 32, algorithm="HS256",
                                    headers={"kid": kid}), "algorithm 'HS256' is not accepted")
    _refused(auth_stack, jwt.encode(_claims(idp), None, algorithm="none"),
             "algorithm 'none' is not accepted")


def test_key_rotation_is_followed_and_refetches_are_rate_limited(auth_stack, idp):
    assert _get(auth_stack, idp.mint("erin")).status_code == 200  # the JWKS is cached now
    fetched = idp.stats()["jwks"]
    # Unknown kids in a burst: at most one refetch per jwks_min_refetch_seconds (2 s here).
    mallory = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for n in range(5):
        bogus = jwt.encode(_claims(idp), mallory, algorithm="RS256", headers={"kid": f"x{n}"})
        assert _get(auth_stack, bogus).status_code == 401
    assert idp.stats()["jwks"] - fetched <= 1
    # The provider rotates its key (dropping the old one): tokens signed with the new key are
    # accepted as soon as the rate limit lets the service refetch, without a restart.
    new_kid = idp.rotate(keep_old=False)
    token = idp.mint("erin")
    assert jwt.get_unverified_header(token)["kid"] == new_kid
    reply = wait_for(lambda: (r := _get(auth_stack, token)).status_code == 200 and r, 30,
                     "a token signed with the rotated key to be accepted")
    assert reply.json()["name"] == "erin"


def test_opaque_tokens_are_introspected(auth_stack, idp_opaque):
    session = idp_opaque.login("frank", groups=["lab"])
    assert "." not in session.access_token  # opaque, not a JWT
    who = _get(auth_stack, session.access_token).json()
    assert (who["name"], who["via"], who["groups"]) == ("frank", "oidc", ["lab"])
    before = idp_opaque.stats()["introspect"]
    for _ in range(3):  # answers are cached (introspection_cache_seconds)
        assert _get(auth_stack, session.access_token).status_code == 200
    assert idp_opaque.stats()["introspect"] - before <= 1
    # Revoked at the provider: refused once the cached answer is gone (1 s here).
    from fedcompute import oauth

    session.refresh_token = None
    oauth.revoke(session)
    wait_for(lambda: _get(auth_stack, session.access_token).status_code == 401, 30,
             "a revoked opaque token to be refused")
    _refused(auth_stack, session.access_token, "not active")
    _refused(auth_stack, "opaque-but-unknown-token", "not active")


def test_auth_config_names_the_issuers_without_a_token(auth_stack, idp, idp_opaque):
    reply = httpx.get(f"{auth_stack.service_url}/v1/auth/config", timeout=30,
                      headers={"Accept": "application/json"})
    assert reply.status_code == 200
    issuers = {i["issuer"]: i for i in reply.json()["issuers"]}
    assert issuers.keys() == {idp.issuer, idp_opaque.issuer}
    assert issuers[idp.issuer]["client_id"] == "fedcompute-cli"
    assert issuers[idp.issuer]["discovery_url"] == idp.discovery_url
    assert "secret" not in reply.text


# --- claims to identity (unit: no provider needed) -----------------------------------------


def _issuer(**options) -> _Issuer:
    cfg = IssuerConfig(issuer="https://idp.example", audience="fedcompute", **options)
    return _Issuer(cfg, OIDCConfig(issuers=[cfg]))


def test_allowed_domains_prefix_and_scope_mapping():
    issuer = _issuer(username_claim="email", allowed_domains=["uni.example"],
                     user_prefix="", scope_map={"https://scopes.example/compute": ["submit"]},
                     default_scopes=["read"])
    who = issuer.identity({"email": "ann@uni.example", "exp": 1,
                           "scope": "openid https://scopes.example/compute"})
    assert who.user == "ann@uni.example" and who.scopes == {"submit", "read"}
    with pytest.raises(TokenRejected, match="not in an allowed domain"):
        issuer.identity({"email": "ann@elsewhere.example"})
    with pytest.raises(TokenRejected, match="has no 'email' claim"):
        issuer.identity({"sub": "ann"})
    prefixed = _issuer(user_prefix="kc-").identity({"sub": "ann", "scp": ["fedcompute:admin"]})
    assert prefixed.user == "kc-ann" and prefixed.scopes == {"admin"}


def test_unsafe_configuration_is_refused():
    with pytest.raises(ValueError, match="not allowed"):
        IssuerConfig(issuer="https://idp.example", audience="x", algorithms=["HS256"])
    with pytest.raises(ValueError, match="unknown fedcompute scope"):
        IssuerConfig(issuer="https://idp.example", audience="x", default_scopes=["root"])
