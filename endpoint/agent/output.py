"""Live output of running tasks (``stream_output=True``), on its way to the service.

Workers send batches (``runner.LiveOutput``: at most every 0.25 s, 64 KiB a batch, 1 MiB a
task); the forwarder posts what piled up, at most every ``OUTPUT_EVERY`` seconds, on a thread of
its own so that the task path never waits for it. A task's result waits for its own pending
output (``flush_for``), so that the submitter reads a task's last lines before its end.
Best effort: output the service cannot take now is dropped, never spooled.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from fedcompute import errors

from .service_api import ServiceAPI, ServiceUnavailable, SessionReplaced

log = logging.getLogger(__name__)

OUTPUT_EVERY = 0.2
#: Most batches in one request (each at most 64 KiB; the service's payload limit is larger).
PER_REQUEST = 64


class OutputForwarder:
    def __init__(self, api: ServiceAPI, stopping: threading.Event):
        self.api = api
        self.stopping = stopping
        self._pending: list[dict] = []
        self._lock = threading.Lock()
        self._post_lock = threading.Lock()  # one request at a time keeps batches in order
        self._posting: set[str] = set()  # tasks of the request in flight
        self._thread: threading.Thread | None = None

    def add(self, batches: list[dict]) -> None:
        with self._lock:
            self._pending.extend(b for b in batches if isinstance(b, dict))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="fedcompute-output")
                self._thread.start()

    def flush_for(self, task_ids: Iterable[str]) -> None:
        """Post now the pending output of any of these tasks (before their results go)."""
        with self._lock:
            if not self._pending and not self._posting:
                return
            ids = set(task_ids)
            if ids.isdisjoint(self._posting) and not any(
                    b.get("task_id") in ids for b in self._pending):
                return
        self._post()  # (waits for the request in flight first)

    def _run(self) -> None:
        while not self.stopping.wait(OUTPUT_EVERY):
            self._post()
        self._post()

    def _post(self) -> None:
        with self._post_lock:
            with self._lock:
                pending, self._pending = self._pending, []
                self._posting = {b.get("task_id") for b in pending}
            try:
                self._send(pending)
            finally:
                with self._lock:
                    self._posting = set()

    def _send(self, pending: list[dict]) -> None:
        for start in range(0, len(pending), PER_REQUEST):
            try:
                self.api.output(pending[start:start + PER_REQUEST])
            except errors.ServiceError as exc:  # refused: a bug here or there, say so
                log.warning("live output of %d batches refused: %s", len(pending) - start, exc)
                return
            except (ServiceUnavailable, SessionReplaced) as exc:
                log.debug("live output of %d batches dropped: %s", len(pending) - start, exc)
                return
