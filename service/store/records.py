"""Small helpers shared by the store's parts: decoding Redis replies and sharing rules."""

from __future__ import annotations

import json
from typing import Any

import redis


def text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


def sharing(owner: bytes, public: bytes | None, shared_with: bytes | None) -> dict[str, Any]:
    """The sharing fields of a function or endpoint hash, decoded."""
    return {"owner": owner.decode(), "public": public == b"1",
            "shared_with": json.loads(shared_with or b"[]")}


def sharing_allows(record: dict[str, Any], user: str) -> bool:
    """Owner, public, or named in ``shared_with``."""
    return (record.get("owner") == user or record.get("public") is True
            or user in record.get("shared_with", ()))


def names_json(names: list[str]) -> str:
    return json.dumps(sorted(set(names)))


def update_sharing(client: redis.Redis, key: str, public: bool | None,
                   shared_with: list[str] | None, allowed_functions: list[str] | None = None,
                   clear_allowed: bool = False) -> None:
    """Change who may use a function or an endpoint (``None`` leaves a field as it is)."""
    mapping: dict[str, Any] = {}
    if public is not None:
        mapping["public"] = int(public)
    if shared_with is not None:
        mapping["shared_with"] = names_json(shared_with)
    if allowed_functions is not None:
        mapping["allowed_functions"] = json.dumps(allowed_functions)
    elif clear_allowed:
        mapping["allowed_functions"] = ""
    if mapping:
        client.hset(key, mapping=mapping)
