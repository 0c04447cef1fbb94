"""``ComputeFuture``: a ``concurrent.futures.Future`` of a remote task."""

from __future__ import annotations

import concurrent.futures
from typing import Any


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

    def __repr__(self) -> str:
        return f"<ComputeFuture task_id={self.task_id} state={self._state}>"
