"""The sharing forms of endpoints and functions: add or remove a user, public on or off."""

from __future__ import annotations

from dataclasses import dataclass

from fedcompute.protocol import Name
from pydantic import TypeAdapter, ValidationError
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import BadRequest

_NAME = TypeAdapter(Name)
#: Users an object may be shared with, at most (as the REST API's ``SharingUpdate``).
MAX_SHARED = 1000


@dataclass(frozen=True)
class Change:
    """What a sharing form asks for (``None``: leave as it is) and what to tell the user."""

    public: bool | None
    shared_with: list[str] | None
    message: str


def change_from(form: MultiDict, record: dict, what: str) -> Change:
    """The change a sharing form posted for ``record`` (an endpoint or function)."""
    op = form.get("op", "")
    title = what.capitalize()
    if op in ("public", "private"):
        public = op == "public"
        state = "now public" if public else "no longer public"
        return Change(public, None, f"{title} is {state}.")
    if op not in ("add", "remove"):
        raise BadRequest("unknown sharing change")
    name = form.get("user", "").strip()
    try:
        _NAME.validate_python(name)
    except ValidationError:
        return Change(None, None, "A user name is letters, digits and _.@- (at most 64).")
    shared = list(record.get("shared_with", ()))
    if op == "add":
        if name == record.get("owner"):
            return Change(None, None, f"{name} owns this {what}.")
        if name in shared:
            return Change(None, None, f"{title} is already shared with {name}.")
        if len(shared) >= MAX_SHARED:
            return Change(None, None, f"{title} is shared with {MAX_SHARED} users already.")
        return Change(None, sorted({*shared, name}), f"{title} is now shared with {name}.")
    if name not in shared:
        return Change(None, None, f"{title} is not shared with {name}.")
    return Change(None, [n for n in shared if n != name],
                  f"{title} is no longer shared with {name}.")
