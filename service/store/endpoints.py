"""Endpoint records: registration, sharing, liveness as the service sees it, queue counts."""

from __future__ import annotations

import json
import time

import redis

from . import keys
from .cache import Cache
from .records import names_json, sharing, sharing_allows, text, update_sharing
from .tokens import Tokens


class Endpoints:
    def __init__(self, client: redis.Redis, tokens: Tokens, heartbeat_timeout: float,
                 cache: Cache):
        self.redis = client
        self.tokens = tokens
        self.heartbeat_timeout = heartbeat_timeout
        self.cache = cache

    def put_endpoint(self, endpoint_id: str, owner: str, name: str, public: bool,
                     shared_with: list[str], allowed_functions: list[str] | None,
                     metadata: dict, credential_hash: str,
                     shared_with_groups: list[str] | None = None) -> None:
        """Register (or re-register) an endpoint with a new credential; the old one stops
        working at once. ``shared_with_groups=None`` keeps the groups it is shared with."""
        key = keys.endpoint(endpoint_id)
        old = self.redis.hget(key, "credential")
        pipe = self.redis.pipeline()
        if old:
            pipe.delete(keys.token(old.decode()))
            pipe.srem(keys.endpoint_tokens(endpoint_id), old)
        pipe.hsetnx(key, "created", time.time())
        pipe.hset(key, mapping={
            "owner": owner, "name": name, "public": int(public),
            "shared_with": names_json(shared_with),
            "allowed_functions": "" if allowed_functions is None else json.dumps(allowed_functions),
            "metadata": json.dumps(metadata), "credential": credential_hash})
        if shared_with_groups is not None:
            pipe.hset(key, "shared_with_groups", names_json(shared_with_groups))
        pipe.sadd(keys.user_endpoints(owner), endpoint_id)
        pipe.sadd(keys.endpoints(), endpoint_id)
        try:
            pipe.xgroup_create(keys.queue(endpoint_id), keys.CONSUMER_GROUP, id="0",
                               mkstream=True)
            pipe.execute()
        except redis.ResponseError as exc:  # BUSYGROUP: already there
            if "BUSYGROUP" not in str(exc):
                raise
        self.tokens.add_token(credential_hash, "endpoint", endpoint_id)
        self.cache.invalidate(key, *([keys.token(old.decode())] if old else []))

    def endpoint_access(self, endpoint_id: str) -> dict | None:
        """:meth:`get_endpoint` for access checks on the hot path: cached (its sharing and
        allowed functions are current; its status may be a few seconds old)."""
        return self.cache.get(keys.endpoint(endpoint_id), lambda: self.get_endpoint(endpoint_id))

    def get_endpoint(self, endpoint_id: str) -> dict | None:
        raw = self.redis.hgetall(keys.endpoint(endpoint_id))
        if not raw or b"owner" not in raw:
            return None
        rec = {k.decode(): v for k, v in raw.items()}
        last = float(rec["last_heartbeat"]) if rec.get("last_heartbeat") else None
        online = (bool(rec.get("session")) and last is not None
                  and time.time() - last < self.heartbeat_timeout)
        allowed = rec.get("allowed_functions") or b""
        return {
            "endpoint_id": endpoint_id, "name": rec["name"].decode(),
            **sharing(rec["owner"], rec.get("public"), rec.get("shared_with"),
                      rec.get("shared_with_groups")),
            "allowed_functions": json.loads(allowed) if allowed else None,
            "status": "online" if online else "offline", "last_heartbeat": last,
            "created": float(rec.get("created") or 0),
            "session": text(rec.get("session")),
            "details": json.loads(rec.get("status") or b"{}"),
        }

    def endpoints_of(self, user: str, groups: list[str] | None = None) -> list[dict]:
        """Endpoints ``user`` may use (owned, shared with them or their ``groups``, or
        public), oldest first."""
        ids = {i.decode() for i in self.redis.smembers(keys.user_endpoints(user))}
        ids |= set(self.all_endpoint_ids())
        records = (self.get_endpoint(eid) for eid in ids)
        return sorted((r for r in records if r and sharing_allows(r, user, groups)),
                      key=lambda r: r["created"])

    def all_endpoint_ids(self) -> list[str]:
        return [i.decode() for i in self.redis.smembers(keys.endpoints())]

    def endpoint_counts(self, endpoint_id: str) -> tuple[int, int]:
        """(queued in the service, leased to the endpoint)."""
        q = keys.queue(endpoint_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.xlen(q)
        pipe.xpending(q, keys.CONSUMER_GROUP)
        try:
            length, pending = pipe.execute()
        except redis.ResponseError:
            return 0, 0
        leased = pending["pending"] if pending else 0
        return max(length - leased, 0), leased

    def share_endpoint(self, endpoint_id: str, public: bool | None,
                       shared_with: list[str] | None, allowed_functions: list[str] | None,
                       clear_allowed: bool = False,
                       shared_with_groups: list[str] | None = None) -> None:
        update_sharing(self.redis, keys.endpoint(endpoint_id), public, shared_with,
                       allowed_functions, clear_allowed, shared_with_groups)
        self.cache.invalidate(keys.endpoint(endpoint_id))

    def delete_endpoint(self, endpoint_id: str, owner: str) -> None:
        self.tokens.revoke_tokens("endpoint", endpoint_id)
        pipe = self.redis.pipeline()
        pipe.delete(keys.endpoint(endpoint_id), keys.queue(endpoint_id))
        pipe.srem(keys.user_endpoints(owner), endpoint_id)
        pipe.srem(keys.endpoints(), endpoint_id)
        pipe.zrem(keys.endpoint_beats(), endpoint_id)
        pipe.execute()
        self.cache.invalidate(keys.endpoint(endpoint_id))
