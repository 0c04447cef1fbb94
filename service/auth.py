"""Who is calling: bearer tokens of three kinds, checked on every request.

* Static user tokens (``fcu_...``) and endpoint credentials (``fce_...``): 256-bit random
  strings made by the service, stored only as SHA-256 hashes (a fast hash is enough for such
  tokens: a stolen database reveals no usable token). User tokens carry scopes and may expire.
* Anything else is an OpenID Connect access token from a configured issuer (``oidc.py``):
  its user is created on first use, its groups come from the issuer's group claim and its
  scopes from its ``scope`` claim.

Routes say what they need: ``require_user(scope)`` (403 naming the scope when the token lacks
it) or ``require_endpoint()``.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import g, request
from werkzeug.exceptions import Forbidden, ServiceUnavailable, TooManyRequests, Unauthorized

from . import oidc
from .context import fed
from .scopes import ENDPOINT, SCOPES, USER_SCOPES, check_scopes, grants
from .store import Store

USER_PREFIX = "fcu_"
ENDPOINT_PREFIX = "fce_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user (``name`` = user name) or an endpoint (``name`` = endpoint id).

    ``scopes`` are what the token may do, ``groups`` the user's groups (OIDC only), ``via``
    how it signed in (``token``, ``oidc`` or ``endpoint``), ``expires`` the token's expiry."""

    kind: str
    name: str
    scopes: frozenset[str] = USER_SCOPES
    groups: tuple[str, ...] = ()
    via: str = "token"
    issuer: str | None = None
    expires: float | None = None

    def allows(self, scope: str) -> bool:
        return grants(self.scopes, scope)


class UserName(str):
    """The calling user's name, as route handlers use it (a plain ``str`` for owners, keys and
    messages) that also carries the principal, so that sharing checks see its groups."""

    principal: Principal

    def __new__(cls, principal: Principal) -> UserName:
        self = super().__new__(cls, principal.name)
        self.principal = principal
        return self

    @property
    def groups(self) -> tuple[str, ...]:
        return self.principal.groups

    def __reduce__(self) -> tuple:
        # Pickled (RQ job arguments) as the plain name: the principal stays in this request.
        return (str, (str(self),))


def new_token(prefix: str = USER_PREFIX) -> str:
    return prefix + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_user_token(store: Store, user: str, label: str = "", scopes: list[str] | None = None,
                     expires: float | None = None) -> str:
    """A new static token for ``user``; ``scopes=None``: all user scopes, ``expires``: epoch
    seconds (None: never)."""
    token = new_token(USER_PREFIX)
    store.add_token(hash_token(token), "user", user, label,
                    check_scopes(scopes) if scopes is not None else None, expires)
    return token


class RateLimited(TooManyRequests):
    def __init__(self, retry_after: int):
        super().__init__(f"rate limit exceeded; retry after {retry_after} s")
        self.retry_after = retry_after


def _retry_after(window: int) -> int:
    # Counters are per fixed window: come back when this one ends.
    return max(1, math.ceil(window - time.time() % window))


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def authenticate(headers: Any) -> Principal:
    """The principal behind the ``Authorization: Bearer`` header, or 401/429 (503 when the
    identity provider cannot be asked)."""
    value = headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
    token = token.strip()
    if token.startswith((USER_PREFIX, ENDPOINT_PREFIX)):
        return _static(token)
    return _oidc(token)


def _static(token: str) -> Principal:
    if len(token) > 256:
        raise Unauthorized("invalid token")
    ctx = fed()
    limit = ctx.settings.rate_limit if token.startswith(USER_PREFIX) else 0
    window = ctx.settings.rate_window if limit else 0
    principal, count = ctx.store.lookup_token(hash_token(token), window)
    if not principal:
        raise Unauthorized("invalid or revoked token")
    expires = principal.get("expires")
    if expires is not None and expires <= time.time():
        raise Unauthorized(f"token expired at {_when(expires)}; ask for a new one")
    if limit and count > limit:
        raise RateLimited(_retry_after(window))
    if principal["kind"] == "endpoint":
        return Principal("endpoint", principal["name"], frozenset({ENDPOINT}), via="endpoint")
    scopes = principal.get("scopes")
    return Principal("user", principal["name"],
                     USER_SCOPES if scopes is None else frozenset(scopes) & set(SCOPES),
                     expires=expires)


_known_users: set[str] = set()
_known_lock = threading.Lock()


def _oidc(token: str) -> Principal:
    ctx = fed()
    if len(token) > 16384:
        raise Unauthorized("invalid token")
    try:
        verifier = oidc.verifier(ctx.settings.oidc_config)
    except ValueError as exc:  # a broken config file: the operator's problem, said clearly
        raise ServiceUnavailable(str(exc)) from exc
    if verifier is None:
        raise Unauthorized("invalid token: not a fedcompute token, and this service trusts "
                           "no OpenID Connect issuer")
    try:
        who = verifier.verify(token)
    except oidc.TokenRejected as exc:
        raise Unauthorized(str(exc)) from exc
    except oidc.ProviderUnavailable as exc:
        raise ServiceUnavailable(str(exc)) from exc
    with _known_lock:
        known = who.user in _known_users
    if not known:  # the user exists from its first signed-in request on
        ctx.store.create_user(who.user)
        with _known_lock:
            _known_users.add(who.user)
    limit, window = ctx.settings.rate_limit, ctx.settings.rate_window
    if limit and ctx.store.tokens.count_request(f"oidc:{who.user}", window) > limit:
        raise RateLimited(_retry_after(window))
    return Principal("user", who.user, who.scopes, who.groups, "oidc", who.issuer, who.expires)


def current_principal() -> Principal:
    if "principal" not in g:
        g.principal = authenticate(request.headers)
    return g.principal


def check_scope(principal: Principal, scope: str) -> None:
    """403 naming ``scope`` unless ``principal``'s token grants it."""
    if not principal.allows(scope):
        held = ", ".join(s for s in SCOPES if s in principal.scopes) or "none"
        raise Forbidden(f"this token lacks the scope {scope!r} (it has: {held})")


def require_user(scope: str) -> UserName:
    """The calling user's name (carrying its groups), if its token grants ``scope`` (one of
    ``scopes.SCOPES``); endpoints may not act as users."""
    principal = current_principal()
    if principal.kind != "user":
        raise Forbidden("this operation needs a user token, not an endpoint credential")
    check_scope(principal, scope)
    return UserName(principal)


def require_endpoint() -> str:
    """The calling endpoint's id; users may not act as endpoints."""
    principal = current_principal()
    if principal.kind != "endpoint":
        raise Forbidden("this operation needs an endpoint credential, not a user token")
    return principal.name
