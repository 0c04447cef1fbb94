"""Per-process caches of records read on every request (tokens, endpoints' and functions'
sharing), dropped in every process at once when one changes.

A change publishes the record's key on an invalidation channel; each process's wake-up
listener drops its copy. Entries also expire after ``TTL`` seconds, which bounds how stale a
copy can get if an invalidation is missed (the listener reconnecting after a failover).
Request counts for rate limits are kept here too and added to Redis in the background, so a
request costs no write of its own.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import redis

from . import keys
from .wakeups import Wakeups

#: Seconds a cached record may be used without being read again.
TTL = 5.0
_MISSING = object()


def invalidation(key: str) -> str:
    return keys.wake(f"inv:{key}")


class Cache:
    def __init__(self, client: redis.Redis, wakeups: Wakeups, size: int = 50_000):
        self.redis = client
        self.wakeups = wakeups
        self.size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._listening = False

    def get(self, key: str, load: Callable[[], Any]) -> Any:
        """The cached value of ``key``, or ``load()`` (cached unless it is None)."""
        if not self._listening:
            self._listening = True
            self.wakeups.on(invalidation(""), self._dropped)
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(key, _MISSING)
            if hit is not _MISSING and hit[0] > now:
                self._entries.move_to_end(key)
                return hit[1]
        value = load()
        if value is not None and self.wakeups.connected.is_set():
            with self._lock:
                self._entries[key] = (now + TTL, value)
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
        return value

    def invalidate(self, *cache_keys: str) -> None:
        """``key`` changed: every process (this one too) drops its copy."""
        pipe = self.redis.pipeline(transaction=False)
        for key in cache_keys:
            self.drop(key)
            pipe.publish(invalidation(key), "")
        pipe.execute()

    def drop(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def _dropped(self, channel: str, data: bytes) -> None:
        self.drop(channel.removeprefix(invalidation("")))


class RateCounter:
    """Requests per subject and fixed window: counted here at once, added to Redis every
    ``FLUSH`` seconds (so every instance sees about the same totals)."""

    FLUSH = 0.25

    def __init__(self, client: redis.Redis):
        self.redis = client
        self._lock = threading.Lock()
        self._pending: dict[str, int] = {}   # redis key -> requests not yet added
        self._flushing: dict[str, int] = {}  # ... being added right now
        self._known: dict[str, int] = {}     # redis key -> total as Redis last said
        self._thread: threading.Thread | None = None

    def count(self, subject: str, window: int) -> int:
        """Count one request of ``subject``; its requests in this window so far, all
        instances' (as of the last flush) and this one's."""
        key = keys.rate(subject, int(time.time() // window))
        with self._lock:
            self._pending[key] = self._pending.get(key, 0) + 1
            total = (self._known.get(key, 0) + self._flushing.get(key, 0)
                     + self._pending[key])
            if self._thread is None:
                self._thread = threading.Thread(target=self._flush_forever, args=(window,),
                                                daemon=True, name="fedcompute-rates")
                self._thread.start()
        return total

    def _flush_forever(self, window: int) -> None:
        while True:
            time.sleep(self.FLUSH)
            with self._lock:
                pending, self._pending = self._pending, {}
                self._flushing = pending
            if not pending:
                continue
            try:
                pipe = self.redis.pipeline(transaction=False)
                for key, n in pending.items():
                    pipe.incrby(key, n)
                    pipe.expire(key, window * 2)
                totals = pipe.execute()[::2]
            except redis.RedisError:
                with self._lock:  # try again at the next round
                    self._flushing = {}
                    for key, n in pending.items():
                        self._pending[key] = self._pending.get(key, 0) + n
                continue
            with self._lock:
                if len(self._known) > 100_000:  # old windows' totals: nobody asks any more
                    self._known.clear()
                self._known.update(zip(pending, (int(t) for t in totals), strict=True))
                self._flushing = {}
