"""The Executor's result side: one background thread long-polls the task group's result
stream and hands each record to ``resolve``; the stream's cursor makes every record arrive
once, whichever service instance answers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from . import errors
from .client import Client
from .retry import Backoff

log = logging.getLogger(__name__)


class ResultPoller:
    def __init__(self, client: Client, group: Callable[[], Any], poll_wait: float,
                 waiting: Callable[[], bool], resolve: Callable[[dict], None],
                 refused: Callable[[BaseException], None], lock: threading.Condition,
                 event: Callable[[dict], None] | None = None,
                 output: Callable[[dict], None] | None = None):
        self.client = client
        self.group = group
        self.poll_wait = poll_wait
        self.waiting = waiting        # any future still waiting? (called under ``lock``)
        self.resolve = resolve
        self.refused = refused        # the service refuses the stream (401/403/404)
        self.event = event            # a state event: tasks leased, waiting for nodes, running
        self.output = output          # live output of a running task (stream_output)
        self.lock = lock
        self.cursor = "0"
        self.closed = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name="fedcompute-results")
            self._thread.start()

    def _run(self) -> None:
        backoff = Backoff(0.5, 10.0)
        while True:
            with self.lock:
                while not self.waiting():
                    if self.closed:
                        return
                    self.lock.wait()
            try:
                page = self.client.results_page(str(self.group()), self.cursor,
                                                wait=self.poll_wait,
                                                events=self.event is not None)
                backoff.reset()
            except errors.ServiceError as exc:
                if exc.status in (401, 403, 404):
                    self.refused(exc)
                    continue
                delay = backoff.next()
                log.warning("result stream failed (%s); retrying in %.1fs", exc, delay)
                threading.Event().wait(delay)
                continue
            self.cursor = page["cursor"]
            if self.event is not None:
                for event in page.get("events") or ():
                    self.event(event)
            if self.output is not None:  # ahead of the records: a task's last lines first
                for event in page.get("output") or ():
                    self.output(event)
            for record in page["results"]:
                self.resolve(record)
