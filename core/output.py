"""Live output of running tasks (``stream_output=True``) as lines: what the service relays
comes in chunks, cut wherever the worker's batch ended."""

from __future__ import annotations

import time
from typing import NamedTuple


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
