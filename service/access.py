"""Who may see what: one rule for functions, endpoints, tasks and task groups.

Objects a user may not use answer 404, not 403, so that ids of other users' objects cannot
be probed."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from werkzeug.exceptions import NotFound

from .store import sharing_allows

R = TypeVar("R", bound=dict)


def _name_and_groups(who: Any, groups: Iterable[str] | None) -> tuple[str, Iterable[str]]:
    """``who`` is a ``Principal``, or a user name (the ``UserName`` that ``require_user``
    returns carries its principal's groups; a plain ``str`` has none)."""
    if hasattr(who, "kind") and hasattr(who, "name"):  # a Principal
        return who.name, who.groups if groups is None else groups
    return who, getattr(who, "groups", ()) if groups is None else groups


def usable(record: R | None, who: Any, what: str, groups: Iterable[str] | None = None) -> R:
    """``record`` if ``who`` (a principal or user name) owns it, or it is public, or shared
    with the user or one of its groups; else 404 naming ``what`` (e.g. "endpoint <id>")."""
    name, groups = _name_and_groups(who, groups)
    if record is None or not sharing_allows(record, name, groups):
        raise NotFound(f"{what} not found")
    return record


def owned(record: R | None, who: Any, what: str) -> R:
    """``record`` if ``who`` (a principal or user name) owns it, else 404 (a shared object is
    not the user's to change; the answer is the same whether it exists or not)."""
    name, _ = _name_and_groups(who, ())
    if record is None or record.get("owner") != name:
        raise NotFound(f"{what} not found")
    return record
