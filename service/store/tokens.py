"""Users and their bearer tokens (stored as SHA-256 hashes only), endpoints' credentials."""

from __future__ import annotations

import time

import redis

from . import keys
from .records import text


def _owner_set(kind: str, name: str) -> str:
    return keys.user_tokens(name) if kind == "user" else keys.endpoint_tokens(name)


class Tokens:
    """Principals: users, and the token hashes that stand for a user or an endpoint."""

    def __init__(self, client: redis.Redis):
        self.redis = client

    def create_user(self, name: str) -> bool:
        """Create ``name`` if new; True if it was created."""
        created = self.redis.hsetnx(keys.user(name), "created", time.time())
        self.redis.sadd(keys.users(), name)
        return bool(created)

    def list_users(self) -> list[str]:
        return sorted(m.decode() for m in self.redis.smembers(keys.users()))

    def add_token(self, token_hash: str, kind: str, name: str, label: str = "") -> None:
        pipe = self.redis.pipeline()
        pipe.hset(keys.token(token_hash),
                  mapping={"kind": kind, "name": name, "created": time.time(), "label": label})
        pipe.sadd(_owner_set(kind, name), token_hash)
        pipe.execute()

    def lookup_token(self, token_hash: str, rate_window: int = 0) -> tuple[dict, int]:
        """The token's principal and, if rate limiting is on, this window's request count."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(keys.token(token_hash), "kind", "name")
        if rate_window:
            key = keys.rate(token_hash, int(time.time() // rate_window))
            pipe.incr(key)
            pipe.expire(key, rate_window * 2)
        out = pipe.execute()
        kind, name = out[0]
        principal = {"kind": text(kind), "name": text(name)} if kind else {}
        return principal, (out[1] if rate_window else 0)

    def revoke_tokens(self, kind: str, name: str) -> int:
        """Revoke every token of a user or endpoint; returns how many."""
        owner_set = _owner_set(kind, name)
        hashes = [h.decode() for h in self.redis.smembers(owner_set)]
        pipe = self.redis.pipeline()
        for h in hashes:
            pipe.delete(keys.token(h))
        pipe.delete(owner_set)
        pipe.execute()
        return len(hashes)

    def revoke_token(self, token_hash: str) -> bool:
        principal, _ = self.lookup_token(token_hash)
        if not principal:
            return False
        pipe = self.redis.pipeline()
        pipe.delete(keys.token(token_hash))
        pipe.srem(_owner_set(principal["kind"], principal["name"]), token_hash)
        pipe.execute()
        return True
