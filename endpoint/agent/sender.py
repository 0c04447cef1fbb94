"""Results back to the service, in batches; while it is unreachable they wait in the spool.

One thread. A result leaves the agent's memory only once the service has stored it, or once it
is in the spool on disk (fsynced), from where it is sent, oldest first, before anything newer.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from fedcompute import errors

from ..records import TaskResult
from ..spool import Spool
from .ledger import Ledger
from .service_api import ServiceAPI, ServiceUnavailable, SessionReplaced

log = logging.getLogger(__name__)

_NOT_NOW = (ServiceUnavailable, errors.ServiceError, SessionReplaced)
#: While more results are on their way, wait this long for company before sending.
LINGER = 0.002


class ResultSender:
    def __init__(self, api: ServiceAPI, spool: Spool, ledger: Ledger, batch_size: int,
                 stopping: threading.Event):
        self.api = api
        self.spool = spool
        self.ledger = ledger
        self.batch_size = batch_size
        self.stopping = stopping
        self._results: queue.Queue[TaskResult] = queue.Queue()

    def put(self, results: list[TaskResult]) -> None:
        for r in results:
            self._results.put(r)

    def run(self) -> None:
        """Send until stopping and nothing is left to send (spooled results included only
        while the service answers)."""
        backoff = 0.0
        while True:
            done = (self.stopping.is_set() and self._results.empty()
                    and not self.ledger.outstanding())
            if backoff and not done:
                self.stopping.wait(backoff)
            if self.spool.files() and not self._flush_spool():
                backoff = min(max(backoff * 2, 0.5), 10.0)
                batch = self._drain(0)
                if batch:
                    self.spool.put([r.wire() for r in batch])
                if done:
                    return
                continue
            backoff = 0.0
            batch = self._drain(0.2)
            if not batch:
                if done:
                    return
                continue
            try:
                self._send([r.wire() for r in batch])
            except _NOT_NOW as exc:
                log.warning("could not send %d results (%s); spooled to disk", len(batch), exc)
                self.spool.put([r.wire() for r in batch])
                backoff = 0.5

    def _drain(self, first_wait: float) -> list[TaskResult]:
        batch: list[TaskResult] = []
        try:
            batch.append(self._results.get(timeout=first_wait))
        except queue.Empty:
            return batch
        linger = LINGER if self.ledger.outstanding() else 0.0
        deadline = time.monotonic() + linger
        while len(batch) < self.batch_size:
            try:
                batch.append(self._results.get_nowait())
            except queue.Empty:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.0005)
        return batch

    def _send(self, batch: list[dict]) -> None:
        """Send wire results; a batch the service finds too large is split, and a single
        result it refuses becomes a ResultTooLarge failure."""
        try:
            self.api.results(batch)
        except errors.PayloadTooLarge as exc:
            if len(batch) > 1:
                half = len(batch) // 2
                self._send(batch[:half])
                self._send(batch[half:])
                return
            refused = TaskResult.failure(batch[0]["task_id"], errors.ResultTooLarge(
                f"the service refused the result: {exc.message}"))
            self._send([refused.wire()])
            return
        self.ledger.delivered(r["task_id"] for r in batch)

    def _flush_spool(self) -> bool:
        for path in self.spool.files():
            try:
                self._send(self.spool.read(path))
            except _NOT_NOW:
                return False
            path.unlink()
            log.info("delivered spooled results %s", path.name)
        return True
