"""Who may see what: one rule for functions, endpoints, tasks and task groups.

Objects a user may not use answer 404, not 403, so that ids of other users' objects cannot
be probed."""

from __future__ import annotations

from typing import TypeVar

from werkzeug.exceptions import NotFound

from .store import sharing_allows

R = TypeVar("R", bound=dict)


def usable(record: R | None, user: str, what: str) -> R:
    """``record`` if ``user`` owns it or it is public or shared with them, else 404 naming
    ``what`` (e.g. "endpoint <id>")."""
    if record is None or not sharing_allows(record, user):
        raise NotFound(f"{what} not found")
    return record


def owned(record: R | None, user: str, what: str) -> R:
    """``record`` if ``user`` owns it, else 404 (a shared object is not the user's to
    change; the answer is the same whether it exists or not)."""
    if record is None or record.get("owner") != user:
        raise NotFound(f"{what} not found")
    return record
