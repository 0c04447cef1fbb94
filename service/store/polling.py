"""Long-polls that block in Redis in short slices, so that a stopping service ends them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

#: Long-polls block in Redis for at most this long at a time, then look at the stop event.
SLICE = 1.0


def block_ms(wait: float) -> int | None:
    """XREAD's BLOCK for a wait in seconds: None (do not block) for 0, and never 0 for a
    positive wait, since BLOCK 0 means "forever" (a request hung, a server thread lost)."""
    return max(1, int(wait * 1000)) if wait > 0 else None


def long_poll(read: Callable[[int | None], Any], wait: float, stopping: threading.Event) -> Any:
    """Call ``read(block_ms)`` until it returns something, ``wait`` is over or we stop."""
    deadline = time.monotonic() + wait
    while True:
        left = deadline - time.monotonic()
        reply = read(block_ms(min(max(left, 0.0), SLICE)))
        if reply or left <= SLICE or stopping.is_set():
            return reply
