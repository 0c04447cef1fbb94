"""The lease loop: long-poll the service for tasks while there is room, hand them on.

When a lease reply is lost (service restarting, request timed out), the tasks it carried stay
leased to this session: the poller asks for them back ("recover") at the next lease, and once
more when any request of ours still blocked in the service has surely ended.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from fedcompute.retry import Backoff

from ..config import EndpointConfig
from ..records import LeasedTask
from .dispatcher import FunctionCache
from .ledger import Ledger
from .service_api import ServiceAPI, ServiceUnavailable, SessionReplaced

log = logging.getLogger(__name__)


class LeasePoller:
    def __init__(self, api: ServiceAPI, config: EndpointConfig, ledger: Ledger,
                 functions: FunctionCache, dispatch: Callable[[list[LeasedTask]], list],
                 stopping: threading.Event, status: Callable[[], dict] | None = None,
                 stop_tasks: Callable[[list[str]], None] | None = None):
        self.api = api
        self.stop_tasks = stop_tasks
        self.status = status
        #: When the long-poll in flight was sent (monotonic), None when none is: the service
        #: counts a poll as a heartbeat, so the heartbeat thread stays quiet meanwhile.
        self.polling_since: float | None = None
        self.config = config
        self.ledger = ledger
        self.functions = functions
        self.dispatch = dispatch
        self.stopping = stopping
        self._done = threading.Event()

    def run(self) -> None:
        """Lease and dispatch until stopping (or replaced by another agent). The loop runs on
        a thread of its own, so that a stop need not wait up to ``lease_wait`` for a long-poll
        in flight: what an abandoned poll receives goes back to the queue (the agent's
        shutdown ends its session). The thread lives until :meth:`finished`: children it
        started (multi-user endpoints) must not see it end before the shutdown is over."""
        threading.Thread(target=self._loop, daemon=True, name="fedcompute-lease").start()
        self.stopping.wait()

    def finished(self) -> None:
        """The agent has shut down: the lease thread may end."""
        self._done.set()

    def _loop(self) -> None:
        try:
            self._lease_and_dispatch()
        except BaseException:
            # An agent that no longer leases must not look alive: it stops (and says why).
            log.exception("the lease loop failed; stopping the agent")
            self.stopping.set()
            raise
        finally:
            self._done.wait()

    def _lease_and_dispatch(self) -> None:
        backoff = Backoff(0.5, 15.0)
        recover_at: list[float] = []
        while not self.stopping.is_set():
            room = self.ledger.wait_for_room(self.config.max_outstanding, 0.5)
            if room <= 0:
                continue
            recover = bool(recover_at) and time.monotonic() >= recover_at[0]
            try:
                lease = self._lease(min(room, self.config.max_tasks_per_lease), recover)
            except ServiceUnavailable as exc:
                delay = backoff.next()
                log.warning("lease failed (%s); retrying in %.1fs", exc, delay)
                now = time.monotonic()
                recover_at = [now, now + self.config.lease_wait + 40]
                self.stopping.wait(delay)
                continue
            except SessionReplaced:
                log.error("another agent took over this endpoint; stopping")
                self.stopping.set()
                return
            if self.stopping.is_set():
                return  # handed back by the shutdown (disconnect)
            backoff.reset()
            if lease.get("cancel") and self.stop_tasks is not None:
                try:
                    self.stop_tasks(lease["cancel"])
                except Exception:  # noqa: BLE001 - a failed stop must not stop the leasing
                    log.exception("could not stop %d cancelled tasks", len(lease["cancel"]))
            self.functions.add(lease.get("functions") or {})
            if recover:
                recover_at.pop(0)
            tasks = [LeasedTask.from_lease(t) for t in lease["tasks"]]
            dispatched = self.dispatch(tasks) if tasks else []
            if recover and dispatched:
                log.warning("recovered %d leased tasks whose lease reply was lost",
                            len(dispatched))

    def _lease(self, max_tasks: int, recover: bool) -> dict:
        """One lease request (a long-poll of ``lease_wait`` unless recovering)."""
        wait = 0 if self.stopping.is_set() or recover else self.config.lease_wait
        status = self.status() if self.status is not None else None
        self.polling_since = time.monotonic() if wait else None
        try:
            return self.api.lease(max_tasks, wait, self.functions.ids()[-1024:],
                                  recover=recover, timeout=self.config.lease_wait + 30,
                                  status=status)
        finally:
            self.polling_since = None

