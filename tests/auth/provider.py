"""A small but real OpenID Connect provider for the tests, run as its own process on 127.0.0.1.

Built on Authlib's authorization server (the grants and endpoints are Authlib's; this file only
keeps their records in memory): OpenID Connect discovery, a JWKS, the device authorization
grant (RFC 8628) with a verification page a test "user" approves through HTTP, refresh tokens
(rotated on every use), revocation (RFC 7009) and introspection (RFC 7662). Access tokens are
RFC 9068-style JWTs signed with RS256, or opaque strings with ``--opaque``.

Test controls (not part of any standard, under ``/test/``): rotate the signing key, set a user's
groups, mint a token with chosen claims (signed with the provider's key), and read counters.

``python -m tests.auth.provider --lifetime 6`` prints ``{"url": ...}`` and serves until its
stdin closes (the test process died) or it is terminated.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field

import jwt
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin, grants
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oauth2.rfc8628 import (
    DeviceAuthorizationEndpoint,
    DeviceCodeGrant,
    DeviceCredentialDict,
)
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask, jsonify, request
from werkzeug.serving import make_server

CLI_CLIENT = "fedcompute-cli"            # public: the device flow
SERVICE_CLIENT = "fedcompute-service"    # confidential: introspection
SERVICE_SECRET = "service-secret"
AUTOMATION_CLIENT = "automation"         # confidential: refresh tokens in an Airflow connection
AUTOMATION_SECRET = "automation-secret"


@dataclass
class User:
    name: str
    groups: list[str] = field(default_factory=list)

    def get_user_id(self) -> str:
        return self.name


@dataclass
class Client(ClientMixin):
    client_id: str
    secret: str | None
    grant_types: tuple[str, ...]

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return ""

    def get_allowed_scope(self, scope: str | None) -> str:
        return scope or ""

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return self.secret is not None and secrets.compare_digest(self.secret, client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == "none" if self.secret is None else method in (
            "client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


@dataclass
class Token(TokenMixin):
    """An issued access or refresh token."""

    value: str
    kind: str
    client_id: str
    user: str
    scope: str
    expires_at: float
    revoked: bool = False

    def check_client(self, client: ClientMixin) -> bool:
        return self.client_id == client.get_client_id()

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return int(self.expires_at - time.time())

    def is_expired(self) -> bool:
        return time.time() >= self.expires_at

    def is_revoked(self) -> bool:
        return self.revoked


class State:
    """Everything the provider remembers (in memory; one lock)."""

    def __init__(self, issuer: str, audience: str, lifetime: int, refresh_lifetime: int,
                 opaque: bool):
        self.issuer = issuer
        self.audience = audience
        self.lifetime = lifetime
        self.refresh_lifetime = refresh_lifetime
        self.opaque = opaque
        self.lock = threading.RLock()
        self.keys: list[tuple[str, rsa.RSAPrivateKey]] = []  # newest first
        self.users: dict[str, User] = {}
        self.devices: dict[str, DeviceCredentialDict] = {}
        self.approvals: dict[str, tuple[User, bool]] = {}
        self.tokens: dict[str, Token] = {}
        self.counters = {"jwks": 0, "refresh": 0, "device_token": 0, "introspect": 0,
                         "revoke": 0}
        self.clients = {
            CLI_CLIENT: Client(CLI_CLIENT, None, (DeviceCodeGrant.GRANT_TYPE, "refresh_token")),
            SERVICE_CLIENT: Client(SERVICE_CLIENT, SERVICE_SECRET, ()),
            AUTOMATION_CLIENT: Client(AUTOMATION_CLIENT, AUTOMATION_SECRET,
                                      (DeviceCodeGrant.GRANT_TYPE, "refresh_token")),
        }
        self.rotate(keep_old=False)

    def rotate(self, keep_old: bool) -> str:
        kid = f"key-{uuid.uuid4().hex[:8]}"
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        with self.lock:
            self.keys = [(kid, key), *(self.keys if keep_old else [])]
        return kid

    def user(self, name: str) -> User:
        with self.lock:
            return self.users.setdefault(name, User(name))

    def sign(self, claims: dict, kid: str | None = None) -> str:
        with self.lock:
            kid, key = next(((k, v) for k, v in self.keys if k == kid), self.keys[0]) \
                if kid else self.keys[0]
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid, "typ": "at+jwt"})

    def claims(self, user: User, client_id: str, scope: str) -> dict:
        now = int(time.time())
        return {"iss": self.issuer, "sub": user.name, "aud": self.audience,
                "exp": now + self.lifetime, "iat": now, "nbf": now, "jti": uuid.uuid4().hex,
                "client_id": client_id, "scope": scope, "preferred_username": user.name,
                "email": f"{user.name}@example.org", "groups": list(user.groups)}

    def jwks(self) -> dict:
        with self.lock:
            self.counters["jwks"] += 1
            keys = []
            for kid, key in self.keys:
                jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
                keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return {"keys": keys}


def create_app(state: State) -> Flask:
    app = Flask("fedcompute-test-oidc-provider")
    base = state.issuer

    def save_token(token: dict, req) -> None:
        user = req.user.name if req.user else ""
        client_id = req.client.get_client_id()
        scope = token.get("scope", "")
        now = time.time()
        with state.lock:
            state.tokens[token["access_token"]] = Token(
                token["access_token"], "access_token", client_id, user, scope,
                now + token.get("expires_in", state.lifetime))
            if token.get("refresh_token"):
                state.tokens[token["refresh_token"]] = Token(
                    token["refresh_token"], "refresh_token", client_id, user, scope,
                    now + state.refresh_lifetime)

    server = AuthorizationServer(app, query_client=state.clients.get, save_token=save_token)

    def access_token(client, grant_type, user, scope) -> str:
        if state.opaque:
            return secrets.token_urlsafe(32)
        return state.sign(state.claims(user, client.get_client_id(), scope))

    server.register_token_generator("default", BearerTokenGenerator(
        access_token, lambda **_: secrets.token_urlsafe(32),
        lambda client, grant_type: state.lifetime))

    class Device(DeviceCodeGrant):
        def query_device_credential(self, device_code):
            return state.devices.get(device_code)

        def query_user_grant(self, user_code):
            return state.approvals.get(user_code)

        def should_slow_down(self, credential):
            return False

        def create_token_response(self):
            state.counters["device_token"] += 1
            return super().create_token_response()

    class Refresh(grants.RefreshTokenGrant):
        INCLUDE_NEW_REFRESH_TOKEN = True  # rotation: each refresh token works once
        TOKEN_ENDPOINT_AUTH_METHODS = ["none", "client_secret_basic", "client_secret_post"]

        def authenticate_refresh_token(self, refresh_token):
            token = state.tokens.get(refresh_token)
            if token and token.kind == "refresh_token" and not token.revoked \
                    and not token.is_expired():
                return token
            return None

        def authenticate_user(self, refresh_token):
            return state.user(refresh_token.user)

        def revoke_old_credential(self, refresh_token):
            state.counters["refresh"] += 1
            refresh_token.revoked = True

    class DeviceEndpoint(DeviceAuthorizationEndpoint):
        INTERVAL = 1

        def get_verification_uri(self):
            return f"{base}/device"

        def save_device_credential(self, client_id, scope, data):
            with state.lock:
                state.devices[data["device_code"]] = DeviceCredentialDict(
                    client_id=client_id, scope=scope,
                    expires_at=time.time() + data["expires_in"], **data)

    class Revoke(RevocationEndpoint):
        CLIENT_AUTH_METHODS = ["none", "client_secret_basic", "client_secret_post"]

        def query_token(self, token_string, token_type_hint):
            return state.tokens.get(token_string)

        def revoke_token(self, token, request):
            state.counters["revoke"] += 1
            token.revoked = True

    class Introspect(IntrospectionEndpoint):
        def query_token(self, token_string, token_type_hint):
            state.counters["introspect"] += 1
            return state.tokens.get(token_string)

        def check_permission(self, token, client, request):
            return client.get_client_id() == SERVICE_CLIENT

        def introspect_token(self, token):
            user = state.user(token.user)
            return {"active": True, "client_id": token.client_id, "token_type": "Bearer",
                    "username": user.name, "sub": user.name, "scope": token.scope,
                    "exp": int(token.expires_at), "iss": state.issuer, "aud": state.audience,
                    "groups": list(user.groups)}

    server.register_grant(Device)
    server.register_grant(Refresh)
    server.register_endpoint(DeviceEndpoint)
    server.register_endpoint(Revoke)
    server.register_endpoint(Introspect)

    @app.get("/.well-known/openid-configuration")
    def discovery():
        return jsonify({
            "issuer": state.issuer, "jwks_uri": f"{base}/jwks",
            "token_endpoint": f"{base}/token",
            "device_authorization_endpoint": f"{base}/device_authorization",
            "revocation_endpoint": f"{base}/revoke",
            "introspection_endpoint": f"{base}/introspect",
            "grant_types_supported": [DeviceCodeGrant.GRANT_TYPE, "refresh_token"],
            "token_endpoint_auth_methods_supported": ["none", "client_secret_basic"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "offline_access", "fedcompute",
                                 "fedcompute:submit", "fedcompute:read", "fedcompute:manage",
                                 "fedcompute:endpoint", "fedcompute:admin"]})

    @app.get("/jwks")
    def jwks():
        return jsonify(state.jwks())

    @app.post("/device_authorization")
    def device_authorization():
        return server.create_endpoint_response(DeviceEndpoint.ENDPOINT_NAME)

    @app.post("/token")
    def token():
        return server.create_token_response()

    @app.post("/revoke")
    def revoke():
        return server.create_endpoint_response(Revoke.ENDPOINT_NAME)

    @app.post("/introspect")
    def introspect():
        return server.create_endpoint_response(Introspect.ENDPOINT_NAME)

    @app.get("/device")
    def device_form():
        code = request.args.get("user_code", "")
        return (f"<form method=post><input name=user_code value='{code}'>"
                "<input name=username><input name=groups>"
                "<button name=action value=approve>Approve</button>"
                "<button name=action value=deny>Deny</button></form>")

    @app.post("/device")
    def device_approve():
        """The user signs in as ``username`` and approves (or denies) ``user_code``."""
        code = request.form.get("user_code", "").strip().upper()
        with state.lock:
            if not any(d["user_code"] == code for d in state.devices.values()):
                return jsonify({"error": "unknown user code"}), 404
            user = state.user(request.form["username"])
            if request.form.get("groups") is not None:
                user.groups = [g for g in request.form["groups"].split(",") if g]
            state.approvals[code] = (user, request.form.get("action", "approve") == "approve")
        return jsonify({"approved": state.approvals[code][1], "user": user.name})

    # --- test controls -----------------------------------------------------------------

    @app.post("/test/rotate")
    def rotate():
        body = request.get_json(silent=True) or {}
        return jsonify({"kid": state.rotate(keep_old=bool(body.get("keep_old", True)))})

    @app.post("/test/users/<name>")
    def set_user(name: str):
        body = request.get_json(force=True)
        state.user(name).groups = list(body.get("groups", []))
        return jsonify({"user": name, "groups": state.user(name).groups})

    @app.post("/test/mint")
    def mint():
        """A JWT access token for ``user`` with ``claims`` overriding the usual ones (a claim
        set to null is left out), signed with the current key (or key ``kid``)."""
        body = request.get_json(force=True)
        user = state.user(body["user"])
        claims = state.claims(user, body.get("client_id", CLI_CLIENT),
                              body.get("scope", "fedcompute"))
        for name, value in (body.get("claims") or {}).items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return jsonify({"access_token": state.sign(claims, body.get("kid"))})

    @app.get("/test/stats")
    def stats():
        with state.lock:
            return jsonify({**state.counters, "kids": [k for k, _ in state.keys]})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--lifetime", type=int, default=6, help="access token lifetime, s")
    parser.add_argument("--refresh-lifetime", type=int, default=3600)
    parser.add_argument("--audience", default="fedcompute")
    parser.add_argument("--opaque", action="store_true", help="opaque access tokens")
    args = parser.parse_args()
    # Authlib refuses plain HTTP unless told this is a test setup (it is: 127.0.0.1 only).
    os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"
    state = State("", args.audience, args.lifetime, args.refresh_lifetime, args.opaque)
    # Bind first: the issuer URL names the port the kernel picked.
    srv = make_server("127.0.0.1", args.port, Flask(__name__), threaded=True)
    state.issuer = f"http://127.0.0.1:{srv.server_port}"
    srv.app = create_app(state)
    print(json.dumps({"url": state.issuer, "pid": os.getpid()}), flush=True)

    def watch_parent() -> None:
        sys.stdin.read()  # EOF: the test process is gone
        os._exit(0)

    threading.Thread(target=watch_parent, daemon=True).start()
    srv.serve_forever()


if __name__ == "__main__":
    main()
