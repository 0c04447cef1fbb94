"""Bearer tokens: issued once, stored only as SHA-256 hashes, checked on every request.

Tokens are 256-bit random strings, so a fast hash is enough (no password stretching needed):
a stolen database does not reveal a usable token.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from dataclasses import dataclass
from typing import Any

from flask import g, request
from werkzeug.exceptions import Forbidden, TooManyRequests, Unauthorized

from .context import fed
from .store import Store

USER_PREFIX = "fcu_"
ENDPOINT_PREFIX = "fce_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user (``name`` = user name) or an endpoint (``name`` = endpoint id)."""

    kind: str
    name: str


def new_token(prefix: str = USER_PREFIX) -> str:
    return prefix + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_user_token(store: Store, user: str, label: str = "") -> str:
    token = new_token(USER_PREFIX)
    store.add_token(hash_token(token), "user", user, label)
    return token


class RateLimited(TooManyRequests):
    def __init__(self, retry_after: int):
        super().__init__(f"rate limit exceeded; retry after {retry_after} s")
        self.retry_after = retry_after


def authenticate(headers: Any) -> Principal:
    """The principal behind the ``Authorization: Bearer`` header, or 401/429."""
    value = headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
    token = token.strip()
    if len(token) > 256:
        raise Unauthorized("invalid token")
    ctx = fed()
    limit = ctx.settings.rate_limit if token.startswith(USER_PREFIX) else 0
    window = ctx.settings.rate_window if limit else 0
    principal, count = ctx.store.lookup_token(hash_token(token), window)
    if not principal:
        raise Unauthorized("invalid or revoked token")
    if limit and count > limit:
        # Counters are per fixed window: come back when this one ends.
        raise RateLimited(max(1, math.ceil(window - time.time() % window)))
    return Principal(principal["kind"], principal["name"])


def current_principal() -> Principal:
    if "principal" not in g:
        g.principal = authenticate(request.headers)
    return g.principal


def require_user() -> str:
    """The calling user's name; endpoints may not act as users."""
    principal = current_principal()
    if principal.kind != "user":
        raise Forbidden("this operation needs a user token, not an endpoint credential")
    return principal.name


def require_endpoint() -> str:
    """The calling endpoint's id; users may not act as endpoints."""
    principal = current_principal()
    if principal.kind != "endpoint":
        raise Forbidden("this operation needs an endpoint credential, not a user token")
    return principal.name
