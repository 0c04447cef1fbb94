"""Small helpers shared by the store's parts: decoding Redis replies and sharing rules."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import redis


def text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


def sharing(owner: bytes, public: bytes | None, shared_with: bytes | None,
            shared_with_groups: bytes | None = None) -> dict[str, Any]:
    """The sharing fields of a function or endpoint hash, decoded."""
    return {"owner": owner.decode(), "public": public == b"1",
            "shared_with": json.loads(shared_with or b"[]"),
            "shared_with_groups": json.loads(shared_with_groups or b"[]")}


def sharing_allows(record: dict[str, Any], user: str,
                   groups: Iterable[str] | None = None) -> bool:
    """Owner, public, named in ``shared_with``, or a member of one of ``shared_with_groups``.

    ``groups`` are the caller's groups (from the identity provider's group claim); by default
    those that ``user`` carries (the name ``auth.require_user`` returns carries them)."""
    if record.get("owner") == user or record.get("public") is True \
            or user in record.get("shared_with", ()):
        return True
    shared_groups = record.get("shared_with_groups") or ()
    if not shared_groups:
        return False
    if groups is None:
        groups = getattr(user, "groups", ())
    return not set(shared_groups).isdisjoint(groups)


def names_json(names: list[str]) -> str:
    return json.dumps(sorted(set(names)))


def update_sharing(client: redis.Redis, key: str, public: bool | None,
                   shared_with: list[str] | None, allowed_functions: list[str] | None = None,
                   clear_allowed: bool = False,
                   shared_with_groups: list[str] | None = None) -> None:
    """Change who may use a function or an endpoint (``None`` leaves a field as it is)."""
    mapping: dict[str, Any] = {}
    if public is not None:
        mapping["public"] = int(public)
    if shared_with is not None:
        mapping["shared_with"] = names_json(shared_with)
    if shared_with_groups is not None:
        mapping["shared_with_groups"] = names_json(shared_with_groups)
    if allowed_functions is not None:
        mapping["allowed_functions"] = json.dumps(allowed_functions)
    elif clear_allowed:
        mapping["allowed_functions"] = ""
    if mapping:
        client.hset(key, mapping=mapping)
