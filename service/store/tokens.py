"""Users and their bearer tokens (stored as SHA-256 hashes only), endpoints' credentials.

A token record holds its principal (``kind``, ``name``), a ``label``, and for user tokens
its ``scopes`` (JSON list; absent on tokens made before scopes existed: all user scopes) and
``expires`` (epoch seconds; absent: never). An expired token's record is kept for a grace
period so that its holder is told it *expired* rather than that it is unknown.
"""

from __future__ import annotations

import json
import time

import redis

from . import keys
from .cache import Cache, RateCounter
from .records import text

#: How long an expired token's record stays, to answer "expired" rather than "invalid".
EXPIRED_GRACE = 30 * 24 * 3600


def _owner_set(kind: str, name: str) -> str:
    return keys.user_tokens(name) if kind == "user" else keys.endpoint_tokens(name)


class Tokens:
    """Principals: users, and the token hashes that stand for a user or an endpoint."""

    def __init__(self, client: redis.Redis, cache: Cache, rates: RateCounter):
        self.redis = client
        self.cache = cache
        self.rates = rates

    def create_user(self, name: str) -> bool:
        """Create ``name`` if new; True if it was created."""
        created = self.redis.hsetnx(keys.user(name), "created", time.time())
        self.redis.sadd(keys.users(), name)
        return bool(created)

    def list_users(self) -> list[str]:
        return sorted(m.decode() for m in self.redis.smembers(keys.users()))

    def add_token(self, token_hash: str, kind: str, name: str, label: str = "",
                  scopes: list[str] | None = None, expires: float | None = None) -> None:
        """Store a token's hash; ``scopes=None``: all user scopes, ``expires=None``: never."""
        mapping: dict[str, str | float] = {"kind": kind, "name": name, "created": time.time(),
                                           "label": label}
        if scopes is not None:
            mapping["scopes"] = json.dumps(sorted(set(scopes)))
        if expires is not None:
            mapping["expires"] = float(expires)
        pipe = self.redis.pipeline()
        pipe.hset(keys.token(token_hash), mapping=mapping)
        if expires is not None:
            pipe.expireat(keys.token(token_hash), int(expires + EXPIRED_GRACE))
        pipe.sadd(_owner_set(kind, name), token_hash)
        pipe.execute()

    def _principal(self, token_hash: str) -> dict | None:
        kind, name, scopes, expires = self.redis.hmget(keys.token(token_hash), "kind", "name",
                                                       "scopes", "expires")
        if not kind:
            return None
        return {"kind": text(kind), "name": text(name),
                "scopes": json.loads(scopes) if scopes else None,
                "expires": float(expires) if expires else None}

    def lookup_token(self, token_hash: str, rate_window: int = 0) -> tuple[dict, int]:
        """The token's principal (``kind``, ``name``, ``scopes``: a list or None for all,
        ``expires``: epoch seconds or None) and, if rate limiting is on, this window's request
        count. Cached (see ``cache.py``): a revoked token is refused at once everywhere."""
        principal = self.cache.get(keys.token(token_hash),
                                   lambda: self._principal(token_hash)) or {}
        count = self.rates.count(token_hash, rate_window) if rate_window and principal else 0
        return principal, count

    def count_request(self, subject: str, rate_window: int) -> int:
        """Count a request of ``subject`` (e.g. an OIDC user) in this rate window."""
        return self.rates.count(subject, rate_window)

    def tokens_of(self, kind: str, name: str) -> list[dict]:
        """The token records (without hashes' secrets: hashes are not tokens) of a principal."""
        hashes = sorted(h.decode() for h in self.redis.smembers(_owner_set(kind, name)))
        pipe = self.redis.pipeline(transaction=False)
        for h in hashes:
            pipe.hmget(keys.token(h), "label", "created", "scopes", "expires")
        out = []
        for h, (label, created, scopes, expires) in zip(hashes, pipe.execute(), strict=True):
            if created is None:
                continue  # expired past its grace period
            out.append({"hash": h, "label": text(label) or "", "created": float(created),
                        "scopes": json.loads(scopes) if scopes else None,
                        "expires": float(expires) if expires else None})
        return out

    def revoke_tokens(self, kind: str, name: str) -> int:
        """Revoke every token of a user or endpoint; returns how many."""
        owner_set = _owner_set(kind, name)
        hashes = [h.decode() for h in self.redis.smembers(owner_set)]
        pipe = self.redis.pipeline()
        for h in hashes:
            pipe.delete(keys.token(h))
        pipe.delete(owner_set)
        pipe.execute()
        if hashes:
            self.cache.invalidate(*(keys.token(h) for h in hashes))
        return len(hashes)

    def revoke_token(self, token_hash: str) -> bool:
        principal, _ = self.lookup_token(token_hash)
        if not principal:
            return False
        pipe = self.redis.pipeline()
        pipe.delete(keys.token(token_hash))
        pipe.srem(_owner_set(principal["kind"], principal["name"]), token_hash)
        pipe.execute()
        self.cache.invalidate(keys.token(token_hash))
        return True
