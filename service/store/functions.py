"""Registered functions: bodies (opaque bytes), names and sharing."""

from __future__ import annotations

import time
import uuid

import redis

from . import keys
from .cache import Cache, invalidation
from .records import names_json, sharing, sharing_allows, update_sharing


class Functions:
    def __init__(self, client: redis.Redis, cache: Cache):
        self.redis = client
        self.cache = cache

    def put_function(self, owner: str, name: str, body: bytes, digest: str, description: str,
                     public: bool, shared_with: list[str],
                     shared_with_groups: list[str] | None = None) -> str:
        """Register (or update) a function; the same owner and body give the same id."""
        function_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"fedcompute:{owner}:{digest}"))
        key = keys.function(function_id)
        pipe = self.redis.pipeline()
        pipe.hsetnx(key, "created", time.time())
        pipe.hset(key, mapping={"owner": owner, "function_name": name, "body": body,
                                "description": description, "public": int(public),
                                "shared_with": names_json(shared_with),
                                "shared_with_groups": names_json(shared_with_groups or [])})
        pipe.sadd(keys.user_functions(owner), function_id)
        pipe.publish(invalidation(key), "")  # its sharing may have changed
        pipe.execute()
        self.cache.drop(key)
        return function_id

    def get_function(self, function_id: str, with_body: bool = False) -> dict | None:
        names = ["owner", "function_name", "description", "public", "shared_with", "created",
                 "shared_with_groups"]
        if with_body:
            names.append("body")
        values = self.redis.hmget(keys.function(function_id), names)
        if values[0] is None:
            return None
        rec = dict(zip(names, values, strict=True))
        out = {"function_id": function_id,
               **sharing(rec["owner"], rec["public"], rec["shared_with"],
                         rec["shared_with_groups"]),
               "function_name": rec["function_name"].decode(),
               "description": (rec["description"] or b"").decode(),
               "created": float(rec["created"] or 0)}
        if with_body:
            out["body"] = rec["body"]
        return out

    def functions_usable(self, function_ids: list[str], user: str,
                         groups: list[str] | None = None) -> dict[str, bool | None]:
        """For each id: usable by ``user`` (or its ``groups``), not usable (False), or unknown
        (None)."""
        out: dict[str, bool | None] = {}
        for fid in function_ids:
            record = self.cache.get(keys.function(fid), lambda fid=fid: self._sharing(fid))
            out[fid] = None if record is None else sharing_allows(record, user, groups)
        return out

    def _sharing(self, function_id: str) -> dict | None:
        owner, public, shared, groups_of = self.redis.hmget(
            keys.function(function_id), "owner", "public", "shared_with", "shared_with_groups")
        return None if owner is None else sharing(owner, public, shared, groups_of)

    def function_bodies(self, function_ids: list[str]) -> dict[str, bytes]:
        pipe = self.redis.pipeline(transaction=False)
        for fid in function_ids:
            pipe.hget(keys.function(fid), "body")
        return {fid: body for fid, body in zip(function_ids, pipe.execute(), strict=True)
                if body is not None}

    def share_function(self, function_id: str, public: bool | None,
                       shared_with: list[str] | None,
                       shared_with_groups: list[str] | None = None) -> None:
        update_sharing(self.redis, keys.function(function_id), public, shared_with,
                       shared_with_groups=shared_with_groups)
        self.cache.invalidate(keys.function(function_id))

    def delete_function(self, function_id: str, owner: str) -> None:
        pipe = self.redis.pipeline()
        pipe.delete(keys.function(function_id))
        pipe.srem(keys.user_functions(owner), function_id)
        pipe.execute()
        self.cache.invalidate(keys.function(function_id))

