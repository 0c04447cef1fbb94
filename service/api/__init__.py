"""The versioned REST API, one blueprint per resource."""

from __future__ import annotations

import re

from werkzeug.exceptions import BadRequest

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def uuid_arg(value: str, what: str) -> str:
    """A path parameter that must be a UUID: 400 with a clear message otherwise."""
    if not _UUID.match(value):
        raise BadRequest(f"invalid {what} {value[:80]!r}: expected a UUID")
    return value.lower()
