"""Exponential backoff for loops that retry until the other side answers."""

from __future__ import annotations

import threading


class Backoff:
    """Delays of ``first``, doubling up to ``most`` seconds; :meth:`reset` after a success."""

    def __init__(self, first: float = 0.5, most: float = 15.0):
        self.first = first
        self.most = most
        self.delay = first

    def next(self) -> float:
        """The delay to wait now; the next one is twice as long (at most ``most``)."""
        delay = self.delay
        self.delay = min(self.delay * 2, self.most)
        return delay

    def wait(self, stop: threading.Event | None = None) -> bool:
        """Sleep for the next delay; True if ``stop`` was set meanwhile."""
        delay = self.next()
        return stop.wait(delay) if stop is not None else threading.Event().wait(delay)

    def reset(self) -> None:
        self.delay = self.first
