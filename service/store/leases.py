"""Agent sessions and leases: the lease protocol between the service and endpoint agents.

An endpoint's queue is a Redis stream with one consumer group; each agent session is a
consumer. Leasing is XREADGROUP (the entry becomes *pending* for the session) plus the LEASE
script (the task record notes the session). An entry is acknowledged and deleted only when the
task's result is stored (RESULTS), the task is cancelled, or its lease is taken back (REQUEUE):
from a session that was replaced or went silent (counted as an attempt), or handed back by one
that stops (not counted). A session is current while the endpoint's hash names it; any of its
requests is a sign of life (TOUCH).
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis
from fedcompute import errors, serialize
from fedcompute.protocol import packb, unpackb

from . import keys
from .scripts import Scripts
from .wakeups import RECHECK, Wakeups

#: Entries read (XCLAIM, XREADGROUP recover) or requeued per round trip.
PAGE = 2000


class StaleSession(Exception):
    """The agent session was replaced by a newer one of the same endpoint."""


class Leased(list):
    """The tasks of a lease; ``cancels``: ids of tasks the agent holds and must stop."""

    cancels: list[str]

    def __init__(self, tasks: list | None = None, cancels: list[str] | None = None):
        super().__init__(tasks or ())
        self.cancels = cancels or []


class Leases:
    def __init__(self, client: redis.Redis, wakeups: Wakeups, scripts: Scripts, settings: Any):
        self.redis = client
        self.wakeups = wakeups
        self.scripts = scripts
        self.settings = settings

    # --- sessions ----------------------------------------------------------------------

    def connect_agent(self, endpoint_id: str, session: str, status: dict) -> int:
        """A new agent session: its predecessors' leases are reclaimed at once."""
        now = time.time()
        pipe = self.redis.pipeline()
        pipe.hset(keys.endpoint(endpoint_id), mapping={
            "session": session, "last_heartbeat": now, "status": json.dumps(status)})
        pipe.zadd(keys.endpoint_beats(), {endpoint_id: now})
        pipe.execute()
        return self.reclaim(endpoint_id, keep_session=session)[0]

    def _touch(self, endpoint_id: str, session: str, status: dict | None) -> bool:
        return bool(self.scripts.touch(
            keys=[keys.endpoint(endpoint_id), keys.endpoint_beats()],
            args=[session, time.time(), json.dumps(status) if status is not None else "",
                  endpoint_id]))

    def heartbeat(self, endpoint_id: str, session: str, status: dict) -> bool:
        """Record liveness; False if this session has been replaced by a newer one."""
        return self._touch(endpoint_id, session, status)

    def touch(self, endpoint_id: str, session: str, status: dict | None = None) -> None:
        """Any request of the endpoint's current agent session shows it is alive, like a
        heartbeat: a busy agent whose heartbeats lag must not have its leases reclaimed.
        Raises :class:`StaleSession` for a replaced session."""
        if not self._touch(endpoint_id, session, status):
            raise StaleSession(session)

    def expire_session(self, endpoint_id: str, session: str, silent_before: float) -> bool:
        """End ``session`` unless it spoke up after ``silent_before`` or was replaced."""
        return bool(self.scripts.expire_session(keys=[keys.endpoint(endpoint_id)],
                                                args=[session, silent_before]))

    # --- leasing -----------------------------------------------------------------------

    def lease(self, endpoint_id: str, session: str, max_tasks: int, wait: float,
              recover: bool = False, status: dict | None = None) -> list[dict]:
        """Up to ``max_tasks`` new tasks for the session (blocking up to ``wait``), or with
        ``recover`` every task already leased to it: a lease whose reply was lost (the API
        process died, the request timed out) is still pending for this live session, and would
        never be reclaimed. Raises :class:`StaleSession` if the session was replaced.
        A lease is a sign of life, with the agent's ``status`` if it sends one."""
        q = keys.queue(endpoint_id)
        head = [q, keys.endpoint(endpoint_id), keys.endpoint_beats(), keys.cancels(endpoint_id)]
        status_json = json.dumps(status) if status is not None else ""
        calls = 0
        cancels: list[str] = []

        def lease_now(extra: list[Any]) -> tuple[list, bool] | None:
            nonlocal calls
            stale, tasks, stop = self.scripts.lease(keys=head, args=[
                session, time.time(), max_tasks, int(calls == 0), status_json if not calls
                else "", endpoint_id, self.settings.result_ttl, *extra])
            calls += 1
            if stale == 1:
                raise StaleSession(session)
            if stale == 2:
                return [], True  # expired while this request waited: nothing; it may resume
            cancels.extend(t.decode() for t in stop)
            return (tasks, True) if tasks or stop else None

        if recover:
            extra: list[Any] = []
            for entry, fields in self._own_pending_entries(q, session):
                extra += [entry, fields[b"t"]]
            if not extra:
                self.touch(endpoint_id, session, status)
                return Leased()
            reply = lease_now(extra)
        else:
            # A poll ends with tasks, or with tasks to stop. No rechecks: the agent's next poll
            # is one (idle agents are most of a large service's requests).
            reply = self.wakeups.poll(lambda: lease_now([]), keys.wake_queue(endpoint_id), wait,
                                      recheck=max(wait, RECHECK))
        tasks = reply[0] if reply else []
        if not tasks:
            return Leased([], cancels)
        return Leased([{"task_id": tid.decode(), "function_id": fid.decode(), "payload": payload,
                        "resource_specification": unpackb(resources) if resources else None,
                        "options": unpackb(options) if options else None,
                        "attempt": int(attempts or 0), "owner": owner.decode()}
                       for tid, fid, payload, resources, options, attempts, owner in tasks],
                      cancels)

    def _own_pending_entries(self, queue: str, session: str) -> list:
        """The session's pending entries, oldest first, with their fields."""
        entries: list = []
        start = "0"
        while True:
            page = self.redis.xreadgroup(keys.CONSUMER_GROUP, session, {queue: start},
                                         count=PAGE)
            got = page[0][1] if page else []
            entries += [(e, f) for e, f in got if f]
            if len(got) < PAGE:
                return entries
            start = got[-1][0]

    # --- taking leases back ------------------------------------------------------------

    def release(self, endpoint_id: str, session: str, task_ids: list[str],
                disconnect: bool = False) -> int:
        """Hand leased tasks back without counting an attempt (a graceful stop).

        With ``disconnect`` the stopping agent's session also ends: everything still leased to
        it is handed back (what a long-poll it abandoned received), and a poll still blocked
        here hands what it receives back to the queue (see LEASE). A session replaced by a
        newer one meanwhile is not ended, and only ``task_ids`` go back."""
        ended = disconnect and self.expire_session(endpoint_id, session, time.time() + 1)
        pairs = self.pending(endpoint_id, session)
        if not ended:
            wanted = set(task_ids)
            pairs = [(e, t) for e, t in pairs if t in wanted]
        return self.requeue(endpoint_id, pairs, count_attempt=False)[0]

    def reclaim(self, endpoint_id: str, keep_session: str | None = None) -> tuple[int, int]:
        """Requeue leases held by sessions other than ``keep_session`` (all if None)."""
        requeued = failed = 0
        q = keys.queue(endpoint_id)
        for consumer in self.consumers(endpoint_id):
            if consumer == keep_session:
                continue
            r, f = self.requeue(endpoint_id, self.pending(endpoint_id, consumer),
                                count_attempt=True)
            requeued, failed = requeued + r, failed + f
            self.scripts.delconsumer(keys=[q], args=[consumer])
        return requeued, failed

    def consumers(self, endpoint_id: str) -> list[str]:
        """The agent sessions the endpoint's queue knows."""
        try:
            found = self.redis.xinfo_consumers(keys.queue(endpoint_id), keys.CONSUMER_GROUP)
        except redis.ResponseError:
            return []
        return [c["name"].decode() if isinstance(c["name"], bytes) else c["name"] for c in found]

    def pending(self, endpoint_id: str, consumer: str) -> list[tuple[str, str]]:
        """The entries leased by one consumer: (entry id, task id)."""
        q = keys.queue(endpoint_id)
        out: list[tuple[str, str]] = []
        start = "-"
        while True:
            page = self.redis.xpending_range(q, keys.CONSUMER_GROUP, min=start, max="+",
                                             count=PAGE, consumername=consumer)
            if not page:
                return out
            ids = [p["message_id"] for p in page]
            # XCLAIM to the same consumer returns the entries' fields (the task ids).
            for entry, fields in self.redis.xclaim(q, keys.CONSUMER_GROUP, consumer, 0, ids):
                if fields:
                    out.append((entry.decode(), fields[b"t"].decode()))
            if len(page) < PAGE:
                return out
            ms, seq = ids[-1].decode().split("-")
            start = f"{ms}-{int(seq) + 1}"

    def requeue(self, endpoint_id: str, pairs: list[tuple[str, str]],
                count_attempt: bool) -> tuple[int, int]:
        """Queue these leased (entry, task) pairs again; returns (requeued, failed)."""
        if not pairs:
            return 0, 0
        lost = packb(serialize.error_envelope(errors.EndpointLost, (
            f"endpoint {endpoint_id} stopped responding while running this task "
            f"{self.settings.max_attempts} times; giving up")))
        requeued = failed = 0
        for i in range(0, len(pairs), PAGE):
            page = pairs[i:i + PAGE]
            argv: list[Any] = [time.time(), self.settings.result_ttl,
                               self.settings.max_attempts, int(count_attempt), lost]
            for entry, tid in page:
                argv += [entry, tid]
            r, f = self.scripts.requeue(
                keys=[keys.queue(endpoint_id), *(keys.task(t) for _, t in page)], args=argv)
            requeued += int(r)
            failed += int(f)
        return requeued, failed
