"""The pipe between the manager and a user process: msgpack frames, one dict each.

Manager to user process (its stdin):

``{"op": "start", "config": {...}, "settings": {...}}``
    first frame: the rendered user process config, and the manager's task settings.
``{"op": "tasks", "tasks": [LeasedTask fields], "functions": {function_id: body}}``
``{"op": "cancel"}``
    cancel every task running (the manager is shutting down).
``{"op": "stop"}``
    finish and exit (idle, or the manager is shutting down).

User process to manager (its stdout):

``{"op": "ready", "workers": n}`` or ``{"op": "failed", "error": exception envelope}``
``{"op": "results", "results": [TaskResult wire dicts]}``
``{"op": "mark", "state": "running" | "waiting-for-nodes", "task_ids": [...]}``
``{"op": "output", "batches": [live output batches of running tasks]}``
``{"op": "workers", "workers": n}``

Payloads, function bodies and results stay raw bytes; nothing here is unpickled.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import IO, Any

import msgpack

#: Largest frame a reader takes (a results frame holds results of up to max_result_size).
MAX_FRAME = 1 << 30


class FrameWriter:
    """Writes frames to a binary stream; safe to call from several threads."""

    def __init__(self, stream: IO[bytes]):
        self.stream = stream
        self._lock = threading.Lock()

    def write(self, message: dict[str, Any]) -> None:
        """Send one frame (OSError, e.g. BrokenPipeError, once the other side is gone)."""
        data = msgpack.packb(message, use_bin_type=True)
        with self._lock:
            self.stream.write(data)
            self.stream.flush()

    def close(self) -> None:
        with self._lock:
            try:
                self.stream.close()
            except OSError:
                pass


def read_frames(stream: IO[bytes]) -> Iterator[dict[str, Any]]:
    """The frames arriving on ``stream``, until it ends; a frame that is not a dict with an
    ``op`` ends it too (the other side is broken)."""
    # Fed from os.read: a buffered read(n) on a pipe would wait for n bytes.
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_FRAME, strict_map_key=False)
    fd = stream.fileno()
    try:
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return
            unpacker.feed(chunk)
            for message in unpacker:
                if not isinstance(message, dict) or not isinstance(message.get("op"), str):
                    return
                yield message
    except (msgpack.UnpackException, ValueError, OSError):
        return


__all__ = ["MAX_FRAME", "FrameWriter", "read_frames"]
