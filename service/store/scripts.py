"""The Lua scripts (``lua/*.lua``), loaded once per connection pool.

Multi-key updates run as scripts so that a crash at any point leaves a consistent state. Each
script is ``common.lua`` (shared functions) plus its own file, whose header documents its
``KEYS`` and ``ARGV``.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import redis

from . import keys

_LUA = Path(__file__).with_name("lua")
NAMES = ("submit", "lease", "touch", "expire_session", "delconsumer", "results", "requeue",
         "cancel", "mark", "forget_silent", "read_results", "fail", "output",
         "overdue")


@cache
def source(name: str) -> str:
    """The full text of script ``name``, as Redis runs it."""
    templates = ", ".join(f"{k} = '{v}'" for k, v in keys.TEMPLATES.items())
    return (f"local CONSUMER_GROUP = '{keys.CONSUMER_GROUP}'\n"
            f"local KEY_TEMPLATES = {{{templates}}}\n"
            + (_LUA / "common.lua").read_text() + (_LUA / f"{name}.lua").read_text())


class NotReplicated(redis.RedisError):
    """A write was not confirmed by enough replicas in time (the client should retry)."""


class Scripts:
    """Callable scripts: ``scripts.submit(keys=[...], args=[...])``.

    :meth:`durably` runs one and, when ``min_replicas`` is set, waits (``WAIT``) until that
    many replicas have the write: what the service acknowledges then survives a failover."""

    def __init__(self, client: redis.Redis, min_replicas: int = 0, wait_timeout: float = 1.0):
        self.client = client
        self.min_replicas = min_replicas
        self.wait_ms = max(1, int(wait_timeout * 1000))
        for name in NAMES:
            setattr(self, name, client.register_script(source(name)))

    def durably(self, name: str, keys: list, args: list) -> Any:
        script = getattr(self, name)
        if not self.min_replicas:
            return script(keys=keys, args=args)
        # WAIT counts the writes of its own connection: the same pipeline's.
        pipe = self.client.pipeline(transaction=False)
        script(keys=keys, args=args, client=pipe)
        pipe.execute_command("WAIT", self.min_replicas, self.wait_ms)
        result, replicas = pipe.execute()
        if int(replicas) < self.min_replicas:
            raise NotReplicated(f"{name}: {replicas} of {self.min_replicas} replicas confirmed "
                                f"the write within {self.wait_ms} ms")
        return result
