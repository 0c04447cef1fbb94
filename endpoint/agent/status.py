"""What the agent tells the service about itself: heartbeats, status and task states.

Two threads: the status thread follows the engine (workers, scaling, tasks waiting for nodes)
and may block on Dask; the heartbeat thread never waits for Dask, since a heartbeat stuck
behind a busy scheduler would get the endpoint's leases reclaimed.
"""

from __future__ import annotations

import logging
import platform
import threading
import time
from collections.abc import Callable
from typing import Any

from fedcompute import __version__, errors
from fedcompute.versions import versions

from ..engines.base import Engine
from ..spool import Spool
from .ledger import Ledger
from .service_api import ServiceAPI, ServiceUnavailable, SessionReplaced

log = logging.getLogger(__name__)

#: Started tasks are reported in batches this often (seconds).
RUNNING_EVERY = 0.05


def agent_versions() -> dict[str, str]:
    return {**versions("dask", "distributed", "cloudpickle"), "fedcompute": __version__}


class StatusReporter:
    def __init__(self, api: ServiceAPI, engine: Engine, ledger: Ledger, spool: Spool,
                 stopping: threading.Event, on_replaced: Callable[[], None]):
        self.api = api
        self.engine = engine
        self.ledger = ledger
        self.spool = spool
        self.stopping = stopping
        self.on_replaced = on_replaced
        self.heartbeat_interval = 5.0
        self.heartbeat_timeout = 30.0
        #: Called with the worker count when it changes (and now and then): lanes follow it.
        self.on_workers: Callable[[int], Any] | None = None
        #: Called with the batch system's error when its refusals should fail the waiting
        #: tasks (``fail_after_job_refusals``); the agent fails them.
        self.on_jobs_refused: Callable[[str], Any] | None = None
        self.fail_after_job_refusals = 0.0
        #: When the lease long-poll in flight began (monotonic), or None (see LeasePoller).
        self.polling_since: Callable[[], float | None] = lambda: None
        self.workers = 0
        self.started = time.time()
        self._engine_status: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._running: dict[str, dict] = {}  # task id -> its worker, not reported yet
        self._reporter: threading.Thread | None = None
        self._versions = agent_versions()

    def status(self, fresh: bool = True) -> dict[str, Any]:
        """The status heartbeats carry; ``fresh=False`` uses the engine status last gathered by
        the status thread."""
        if fresh or not self._engine_status:
            self._engine_status = self.engine.status()
        return {**self._engine_status, "workers": self.workers,
                "outstanding": self.ledger.outstanding(), "running": self.ledger.running(),
                "spooled_batches": len(self.spool),
                "session": self.api.session, "hostname": platform.node(),
                "uptime": round(time.time() - self.started, 1),
                "versions": self._versions}

    @property
    def versions(self) -> dict[str, str]:
        return self._versions

    def running(self, task_ids: list[str], host: str, pid: int) -> None:
        """Tasks started on a worker: reported within ``RUNNING_EVERY`` seconds, batched,
        unless they finished by then."""
        self.ledger.started(task_ids)
        with self._lock:
            for task_id in task_ids:
                self._running[task_id] = {"host": host, "pid": pid}
            if self._reporter is None:
                self._reporter = threading.Thread(target=self._report_running, daemon=True,
                                                  name="fedcompute-running")
                self._reporter.start()

    def _report_running(self) -> None:
        while not self.stopping.wait(RUNNING_EVERY):
            with self._lock:
                batch, self._running = self._running, {}
            # A task that finished meanwhile has its result on the way, which says more:
            # short tasks cost no state event at all.
            running = self.ledger.still_running(batch)
            batch = {t: w for t, w in batch.items() if t in running}
            if batch:
                try:
                    self.api.mark("running", list(batch), batch)
                except (ServiceUnavailable, errors.ServiceError, SessionReplaced) as exc:
                    log.debug("could not report %d running tasks: %s", len(batch), exc)

    def mark(self, state: str, task_ids: list[str]) -> None:
        """Report leased tasks waiting for nodes, or running (best effort)."""
        try:
            self.api.mark(state, task_ids)
        except (ServiceUnavailable, errors.ServiceError, SessionReplaced) as exc:
            log.warning("could not report %s: %s", state, exc)

    def follow_engine(self) -> None:
        """The status thread: workers, scaling, and tasks that waited for nodes."""
        last = 0.0
        told = (-1, 0.0)  # worker count last told to on_workers, and when
        while not self.stopping.wait(0.5):
            try:
                self.workers = self.engine.worker_count()
                if self.on_workers is not None and (
                        self.workers != told[0] or time.monotonic() - told[1] > 10):
                    told = (self.workers, time.monotonic())
                    self.on_workers(self.workers)
                if time.monotonic() - last >= self.heartbeat_interval:
                    last = time.monotonic()
                    self._engine_status = self.engine.status()
                if self.workers:  # they run when a worker starts them (see running())
                    self.ledger.take_waiting_for_nodes()
                else:
                    self._check_refusals()
                self.engine.scale_for(self.ledger.outstanding())
            except Exception as exc:  # noqa: BLE001 - keep following whatever happens
                log.warning("status update failed: %s", exc)

    def _check_refusals(self) -> None:
        """No worker, and the batch system has refused every job for long enough: the tasks
        waiting for one would wait forever."""
        streak = self.engine.job_refusal()
        if (streak is None or not self.fail_after_job_refusals or self.on_jobs_refused is None
                or not self.ledger.outstanding()):
            return
        seconds, count, error = streak
        if seconds >= self.fail_after_job_refusals:
            self.on_jobs_refused(f"the batch system refused {count} jobs in {seconds:.0f}s "
                                 f"(fail_after_job_refusals: {self.fail_after_job_refusals:g}s); "
                                 f"its last error: {error}")

    def beat(self) -> None:
        """The heartbeat thread. A lease long-poll is a sign of life too (it carries the
        status): while one in flight is younger than the heartbeat timeout less two intervals
        there is nothing to say, so 10,000 idle endpoints cost one request each per poll."""
        while not self.stopping.wait(self.heartbeat_interval):
            since = self.polling_since()
            if since is not None and (time.monotonic() - since
                                      < self.heartbeat_timeout - 2 * self.heartbeat_interval):
                continue
            try:
                self.api.heartbeat(self.status(fresh=False))
            except SessionReplaced:
                log.error("another agent took over this endpoint; stopping")
                self.on_replaced()
            except (ServiceUnavailable, errors.ServiceError) as exc:
                log.warning("heartbeat failed: %s", exc)
