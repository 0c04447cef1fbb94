"""The Executor's submission side: tasks queue in memory and one background thread sends
them in batches (one request each up to ``batch_size`` tasks or ``MAX_REQUEST_BYTES``).

A batch that fails in transit (service unreachable, restarting, an instance killed behind a
load balancer) is sent again: task ids are chosen here, so the service recognises a resent
batch and counts its tasks as duplicates. Waiting for the queue to drain is bounded
(:meth:`Submitter.flush`); what could not be sent then is handed back to be saved and resent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from . import errors
from .client import Client
from .future import ComputeFuture
from .retry import Backoff

log = logging.getLogger(__name__)

#: Upper bound of one submission request's payload bytes (the service's default limit is 64 MiB).
MAX_REQUEST_BYTES = 16 * 1024 * 1024

Queued = tuple[ComputeFuture, dict, str]  # future, task, endpoint id


class Submitter:
    """Queues tasks and sends them; ``on_failed(futures_and_tasks, exc)`` for refused ones."""

    def __init__(self, client: Client, group: Callable[[], Any], batch_size: int,
                 on_failed: Callable[[list[tuple[ComputeFuture, dict]], BaseException], None],
                 burst: tuple[int, int] | None = None):
        self.client = client
        self.group = group
        self.batch_size = batch_size
        self.on_failed = on_failed
        self.burst = burst
        self.submitted = 0
        self._lock = threading.Condition()
        self._queue: deque[Queued] = deque()
        self._in_flight: list[Queued] = []
        self._closed = False
        self._thread: threading.Thread | None = None
        self._sent_at: deque[float] = deque()

    def put(self, future: ComputeFuture, task: dict, endpoint: str) -> None:
        with self._lock:
            self._queue.append((future, task, endpoint))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="fedcompute-submit")
                self._thread.start()
            self._lock.notify_all()

    def withdraw(self, future: ComputeFuture) -> bool:
        """Take a future's task out of the queue if it has not been sent; True if it was."""
        with self._lock:
            for i, (queued, _, _) in enumerate(self._queue):
                if queued is future:
                    del self._queue[i]
                    return True
        return False

    def busy(self) -> bool:
        with self._lock:
            return bool(self._queue or self._in_flight)

    def flush(self, timeout: float | None = None) -> list[Queued]:
        """Wait until every queued task has reached the service (or was refused), at most
        ``timeout`` seconds; returns what was not sent by then (in flight or queued)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        warned = time.monotonic() + 3
        with self._lock:
            while self._queue or self._in_flight:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return [*self._in_flight, *self._queue]
                if time.monotonic() > warned:  # say why waiting takes long
                    log.warning("still sending %d tasks to the service",
                                len(self._queue) + len(self._in_flight))
                    warned = float("inf")
                self._lock.wait(1.0 if left is None else min(left, 1.0))
        return []

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()

    # --- the sending thread ------------------------------------------------------------

    def _next_batch(self) -> tuple[str, list[Queued]] | None:
        with self._lock:
            while not self._queue:
                if self._closed:
                    return None
                self._lock.wait()
            endpoint = self._queue[0][2]
            batch: list[Queued] = []
            size = 0
            while self._queue and len(batch) < self.batch_size and size < MAX_REQUEST_BYTES:
                item = self._queue[0]
                if item[2] != endpoint:
                    break
                self._queue.popleft()
                if not item[0].cancelled():
                    batch.append(item)
                    size += len(item[1]["payload"]) + 200
            self._in_flight = batch
            return endpoint, batch

    def _run(self) -> None:
        while (item := self._next_batch()) is not None:
            endpoint, batch = item
            try:
                if batch:
                    self._send(endpoint, [(f, t) for f, t, _ in batch])
            finally:
                with self._lock:
                    self._in_flight = []
                    self._lock.notify_all()

    def _pace(self) -> None:
        """With a burst limit: wait until fewer than that many submission requests went out
        in the last window."""
        if self.burst is None:
            return
        limit, window = self.burst
        sent = self._sent_at
        while sent and time.monotonic() - sent[0] >= window:
            sent.popleft()
        if len(sent) >= limit:
            time.sleep(max(0.0, window - (time.monotonic() - sent[0])))
            sent.popleft()
        sent.append(time.monotonic())

    def _send(self, endpoint: str, batch: list[tuple[ComputeFuture, dict]]) -> None:
        backoff = Backoff(0.5, 10.0)
        while True:
            try:
                self._pace()
                self.client.submit_tasks(endpoint, [t for _, t in batch], str(self.group()))
                with self._lock:
                    self.submitted += len(batch)
                for future, _ in batch:
                    if future._status == "pending":
                        future._status = "received"
                return
            except errors.PayloadTooLarge as exc:
                if len(batch) > 1:  # find the culprit(s): halve and resend
                    half = len(batch) // 2
                    self._send(endpoint, batch[:half])
                    self._send(endpoint, batch[half:])
                    return
                self.on_failed(batch, exc)
                return
            except errors.ServiceError as exc:
                if exc.status == 0 or exc.status >= 500:
                    # Unreachable or restarting service: task ids make the resend idempotent.
                    delay = backoff.next()
                    log.warning("submission failed (%s); retrying in %.1fs", exc, delay)
                    time.sleep(delay)
                    continue
                self.on_failed(batch, exc)
                return
