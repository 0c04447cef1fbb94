"""Periodic upkeep (run by RQ every few seconds): reclaim the leases of silent endpoints, and
end overdue tasks (not started by their deadline, or about to expire unfinished).

Expiry of old records is Redis's own (every record carries a TTL); the endings index makes
sure no task expires without its submitter being told how it ended.
"""

from __future__ import annotations

import time

from . import keys
from .endpoints import Endpoints
from .leases import Leases
from .records import text
from .tasks import Tasks


class Maintenance:
    def __init__(self, endpoints: Endpoints, leases: Leases, tasks: Tasks,
                 heartbeat_timeout: float):
        self.endpoints = endpoints
        self.leases = leases
        self.tasks = tasks
        self.heartbeat_timeout = heartbeat_timeout

    def maintenance(self) -> dict:
        """One round: returns how many silent endpoints were looked at, leases reclaimed,
        tasks failed (lost their endpoint too often), and overdue tasks ended (``deadline``,
        ``expired``). Only endpoints silent for longer than
        the timeout are read (from the sign-of-life index), so a round costs nothing per live
        or long-offline endpoint."""
        now = time.time()
        report = {"endpoints": 0, "reclaimed": 0, "failed": 0}
        redis = self.endpoints.redis
        silent_before = now - self.heartbeat_timeout
        for raw in redis.zrangebyscore(keys.endpoint_beats(), "-inf", silent_before):
            eid = raw.decode()
            session = text(redis.hget(keys.endpoint(eid), "session")) or ""
            report["endpoints"] += 1
            if session and not self.leases.expire_session(eid, session, silent_before):
                continue  # it spoke up meanwhile: look again at the next round
            r, f = self.leases.reclaim(eid)
            report["reclaimed"] += r
            report["failed"] += f
            # Out of the index until it speaks again (unless it just did).
            self.leases.scripts.forget_silent(keys=[keys.endpoint_beats()],
                                              args=[eid, silent_before])
        report.update(self.tasks.end_overdue())
        return report
