"""The Lua scripts (``lua/*.lua``), loaded once per connection pool.

Multi-key updates run as scripts so that a crash at any point leaves a consistent state. Each
script is ``common.lua`` (shared functions) plus its own file, whose header documents its
``KEYS`` and ``ARGV``.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import redis

from . import keys

_LUA = Path(__file__).with_name("lua")
NAMES = ("submit", "lease", "touch", "expire_session", "delconsumer", "results", "requeue",
         "cancel", "mark")


@cache
def source(name: str) -> str:
    """The full text of script ``name``, as Redis runs it."""
    templates = ", ".join(f"{k} = '{v}'" for k, v in keys.TEMPLATES.items())
    return (f"local CONSUMER_GROUP = '{keys.CONSUMER_GROUP}'\n"
            f"local KEY_TEMPLATES = {{{templates}}}\n"
            + (_LUA / "common.lua").read_text() + (_LUA / f"{name}.lua").read_text())


class Scripts:
    """Callable scripts: ``scripts.submit(keys=[...], args=[...])``."""

    def __init__(self, client: redis.Redis):
        for name in NAMES:
            setattr(self, name, client.register_script(source(name)))
