"""Live output of running tasks (``stream_output=True``).

Client side: what the service relays comes in chunks, cut wherever the worker's batch ended;
:class:`OutputLines` makes lines of them. Worker side: :func:`live_writer` is how a layer that
captures a task's output itself (the Prefect runner's remote body) also streams it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import NamedTuple

_current = threading.local()


def set_live_writer(write: Callable[[str, str], None] | None) -> None:
    """The task running in this thread streams through ``write(stream, text)`` (the endpoint's
    runner sets it around a task submitted with ``stream_output``)."""
    _current.write = write


def live_writer() -> Callable[[str, str], None] | None:
    """``write(stream, text)`` of the task running in this thread, if it streams its output
    (``stream``: "stdout", "stderr" or "log")."""
    return getattr(_current, "write", None)


class OutputLine(NamedTuple):
    """A line a running task wrote."""

    stream: str  #: "stdout", "stderr" or "log" (a logging record)
    text: str    #: the line, without its newline
    at: float    #: when the service received it (epoch seconds)


class OutputLines:
    """Chunks in, complete lines out, one unfinished line kept per stream."""

    def __init__(self) -> None:
        self._partial: dict[str, str] = {}

    def feed(self, stream: str, text: str, at: float) -> list[OutputLine]:
        *complete, rest = (self._partial.pop(stream, "") + text).split("\n")
        if rest:
            self._partial[stream] = rest
        return [OutputLine(stream, line, at) for line in complete]

    def end(self) -> list[OutputLine]:
        """The task ended: each stream's unfinished last line is a line too."""
        partial, self._partial = self._partial, {}
        return [OutputLine(stream, rest, time.time()) for stream, rest in partial.items()]
