"""``ComputeFuture``: a ``concurrent.futures.Future`` of a remote task."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from .output import OutputLine, OutputLines

log = logging.getLogger(__name__)


class ComputeFuture(concurrent.futures.Future):
    """A future for a remote task. ``task_id`` is known as soon as ``submit`` returns."""

    def __init__(self, task_id: str, executor: Any = None):
        super().__init__()
        self.task_id = task_id
        self.stdout: str | None = None
        self.stderr: str | None = None
        self._executor = executor
        #: The task's last known state (see :meth:`status`).
        self._status = "pending"
        #: Live output, made on first use: 100,000 futures of tasks that stream nothing cost
        #: nothing for it (a Condition each measured ~1.8 KB).
        self._live: _LiveOutput | None = None

    def status(self) -> str:
        """The task's state as last heard, at no cost (from the state events on the result
        stream the Executor reads anyway): ``pending`` (not sent yet), ``received``,
        ``leased`` (queued at the endpoint), ``waiting-for-nodes``, ``running``, ``success``,
        ``failed`` or ``cancelled``."""
        if self.cancelled():
            return "cancelled"
        return self._status

    def cancel(self) -> bool:
        """Cancel the task: locally if it has not been sent, else through the service, which
        stops it at the endpoint even if it runs (True then). False once it has finished."""
        if self.done():
            return self.cancelled()
        executor = self._executor
        if executor is not None and not executor._cancel_remote(self):
            return False
        self.cancel_local()
        return True

    def cancel_local(self) -> None:
        """Mark cancelled and wake ``wait``/``as_completed`` waiters (no remote call)."""
        with self._condition:  # the result poller may cancel it at the same moment
            if super().cancel() and self._state == "CANCELLED":
                self.set_running_or_notify_cancel()

    # --- live output (stream_output=True) -------------------------------------------------

    def _live_output(self) -> _LiveOutput:
        live = self._live
        if live is None:
            with self._condition:  # (the Future's own lock) one per future, even from two threads
                if self._live is None:
                    self._live = _LiveOutput()
                    self.add_done_callback(ComputeFuture._wake_output)
                live = self._live
        return live

    @property
    def output(self) -> list[OutputLine]:
        """The lines the task has written so far, in order (a copy)."""
        live = self._live
        if live is None:
            return []
        with live.lock:
            return list(live.lines)

    def add_output_callback(self, fn: Callable[[OutputLine], Any]) -> None:
        """Call ``fn(line)`` for each line the task writes, those written so far first (from
        the Executor's result thread: keep it short; what it raises is logged)."""
        live = self._live_output()
        with live.lock:
            live.callbacks.append(fn)
            lines = list(live.lines)
        for line in lines:
            self._call(fn, line)

    def iter_output(self, timeout: float | None = None) -> Iterator[OutputLine]:
        """The task's lines as they come, until it has ended and all are read;
        ``TimeoutError`` if it has not ended within ``timeout`` seconds."""
        live = self._live_output()
        deadline = None if timeout is None else time.monotonic() + timeout
        index = 0
        while True:
            with live.lock:
                while index >= len(live.lines) and not self.done():
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError(f"task {self.task_id} did not end in {timeout}s")
                    live.lock.wait(0.5 if left is None else min(left, 0.5))
                lines, index = live.lines[index:], len(live.lines)
            if not lines and self.done():
                return
            yield from lines

    def _add_output(self, stream: str, text: str, at: float) -> None:
        """Output the service relayed (the Executor's result thread)."""
        live = self._live_output()
        with live.lock:
            new = live.splitter.feed(stream, text, at)
            live.lines.extend(new)
            callbacks = list(live.callbacks)
            live.lock.notify_all()
        self._call_all(callbacks, new)

    def _end_output(self) -> None:
        """The task ended: its unfinished last lines are lines too."""
        live = self._live
        if live is None:
            return
        with live.lock:
            new = live.splitter.end()
            live.lines.extend(new)
            callbacks = list(live.callbacks)
        self._call_all(callbacks, new)

    def _call_all(self, callbacks: list[Callable[[OutputLine], Any]],
                  lines: list[OutputLine]) -> None:
        for line in lines:
            for fn in callbacks:
                self._call(fn, line)

    def _call(self, fn: Callable[[OutputLine], Any], line: OutputLine) -> None:
        try:
            fn(line)
        except Exception:  # noqa: BLE001 - a callback's failure is the caller's, not the task's
            log.exception("output callback of task %s failed", self.task_id)

    def _wake_output(self) -> None:
        live = self._live
        if live is not None:
            with live.lock:
                live.lock.notify_all()

    def __repr__(self) -> str:
        return f"<ComputeFuture task_id={self.task_id} state={self._state}>"


class _LiveOutput:
    """A future's live output: lines so far, the unfinished ones, callbacks, and a lock."""

    __slots__ = ("callbacks", "lines", "lock", "splitter")

    def __init__(self) -> None:
        self.lines: list[OutputLine] = []
        self.splitter = OutputLines()
        self.callbacks: list[Callable[[OutputLine], Any]] = []
        self.lock = threading.Condition()
