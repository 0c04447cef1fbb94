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
                 stopping: threading.Event, status: Callable[[], dict] | None = None):
        self.api = api
        self.status = status
        #: When the long-poll in flight was sent (monotonic), None when none is: the service
        #: counts a poll as a heartbeat, so the heartbeat thread stays quiet meanwhile.
        self.polling_since: float | None = None
        self.config = config
        self.ledger = ledger
        self.functions = functions
        self.dispatch = dispatch
        self.stopping = stopping
        #: Set by ``abandon()`` to end the wait for a long-poll in flight.
        self._poll_done: threading.Event | None = None

    def run(self) -> None:
        """Lease and dispatch until stopping (or replaced by another agent)."""
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
            if lease is None:
                return  # abandoned: stopping
            backoff.reset()
            self.functions.add(lease.get("functions") or {})
            if recover:
                recover_at.pop(0)
            tasks = [LeasedTask.from_lease(t) for t in lease["tasks"]]
            dispatched = self.dispatch(tasks) if tasks else []
            if recover and dispatched:
                log.warning("recovered %d leased tasks whose lease reply was lost",
                            len(dispatched))

    def _lease(self, max_tasks: int, recover: bool) -> dict | None:
        """One lease request. A long-poll runs on a daemon thread so that ``abandon()`` need
        not wait up to ``lease_wait`` for it (None then). What an abandoned poll receives goes
        back to the queue: the agent's shutdown ends its session in the service."""
        wait = 0 if self.stopping.is_set() or recover else self.config.lease_wait
        timeout = self.config.lease_wait + 30
        cached = self.functions.ids()[-1024:]
        status = self.status() if self.status is not None else None
        if not wait:
            return self.api.lease(max_tasks, 0, cached, recover=recover, timeout=timeout,
                                  status=status)
        done = threading.Event()
        outcome: list = []

        def poll() -> None:
            self.polling_since = time.monotonic()
            try:
                outcome.append((True, self.api.lease(max_tasks, wait, cached, timeout=timeout,
                                                     status=status)))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the lease loop
                outcome.append((False, exc))
            finally:
                self.polling_since = None
            done.set()

        self._poll_done = done
        threading.Thread(target=poll, daemon=True, name="fedcompute-lease").start()
        if self.stopping.is_set():
            done.set()
        done.wait()
        self._poll_done = None
        if not outcome:
            return None
        ok, value = outcome[0]
        if not ok:
            raise value
        return value

    def abandon(self) -> None:
        """Stop waiting for a long-poll in flight."""
        if self._poll_done is not None:
            self._poll_done.set()
