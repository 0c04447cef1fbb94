"""The tasks an agent holds, shared by its threads behind one lock.

A task is *outstanding* from dispatch until it finishes here, then *delivering* until the
service has stored its result. A task leased again meanwhile (a recovered lease, or leases
reclaimed while this agent looked silent) is not run twice: its result will be stored whichever
lease it came with. The last ``REMEMBERED`` delivered tasks are remembered too: a recovered
lease read by the service just before their results were stored (spooled results flushing
while the lease is in flight) must not run them again.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable

#: Delivered task ids remembered (about 40 bytes each).
REMEMBERED = 100_000


class Ledger:
    def __init__(self) -> None:
        self.lock = threading.Condition()
        self._outstanding: dict[str, float] = {}  # task id -> when it was dispatched
        self._delivering: set[str] = set()
        self._waiting_for_nodes: set[str] = set()
        self._running: set[str] = set()  # started on a worker, not finished
        self._delivered: OrderedDict[str, None] = OrderedDict()  # the last ones, oldest first

    def admit(self, task_ids: Iterable[str]) -> set[str]:
        """Record new tasks as outstanding; returns the ids that were not already held."""
        now = time.time()
        with self.lock:
            new = {t for t in task_ids if t not in self._outstanding
                   and t not in self._delivering and t not in self._delivered}
            for t in new:
                self._outstanding[t] = now
        return new

    def dispatched_at(self, task_id: str) -> float:
        with self.lock:
            return self._outstanding.get(task_id, time.time())

    def finished(self, task_ids: Iterable[str]) -> None:
        """These tasks finished here; their results are on their way to the service."""
        with self.lock:
            for t in task_ids:
                self._outstanding.pop(t, None)
                self._waiting_for_nodes.discard(t)
                self._running.discard(t)
                self._delivering.add(t)
            self.lock.notify_all()

    def delivered(self, task_ids: Iterable[str]) -> None:
        with self.lock:
            for t in task_ids:
                self._delivering.discard(t)
                self._delivered[t] = None
            while len(self._delivered) > REMEMBERED:
                self._delivered.popitem(last=False)

    def outstanding(self) -> int:
        with self.lock:
            return len(self._outstanding)

    def started(self, task_ids: Iterable[str]) -> None:
        """These outstanding tasks started on a worker."""
        with self.lock:
            self._running.update(t for t in task_ids if t in self._outstanding)

    def running(self) -> int:
        with self.lock:
            return len(self._running)

    def still_running(self, task_ids: Iterable[str]) -> set[str]:
        """Those of ``task_ids`` that started and have not finished."""
        with self.lock:
            return {t for t in task_ids if t in self._running}

    def wait_for_room(self, capacity: int, timeout: float) -> int:
        """How many more tasks fit under ``capacity`` (waits up to ``timeout`` for room)."""
        with self.lock:
            room = capacity - len(self._outstanding)
            if room <= 0:
                self.lock.wait(timeout)
                room = capacity - len(self._outstanding)
            return max(room, 0)

    def wait_until_done(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for every outstanding task to finish; True if they did."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while self._outstanding:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.lock.wait(min(left, 0.1))
            return True

    def abandon(self) -> list[str]:
        """Forget every outstanding task (shutting down: they go back to the service)."""
        with self.lock:
            left = list(self._outstanding)
            self._outstanding.clear()
            self._running.clear()
            self.lock.notify_all()
            return left

    def wake(self) -> None:
        with self.lock:
            self.lock.notify_all()

    def waiting_for_nodes(self, task_ids: Iterable[str]) -> None:
        with self.lock:
            self._waiting_for_nodes.update(task_ids)

    def take_waiting_for_nodes(self) -> list[str]:
        """The tasks that waited for nodes (a worker is up now); they are not waiting anymore."""
        with self.lock:
            ready = list(self._waiting_for_nodes)
            self._waiting_for_nodes.clear()
            return ready
