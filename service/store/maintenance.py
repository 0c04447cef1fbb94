"""Periodic upkeep (run by RQ every few seconds): reclaim the leases of silent endpoints.

Expiry of old tasks and results is Redis's own (every record carries a TTL), so nothing else
needs sweeping.
"""

from __future__ import annotations

import time

from . import keys
from .endpoints import Endpoints
from .leases import Leases
from .records import text


class Maintenance:
    def __init__(self, endpoints: Endpoints, leases: Leases, heartbeat_timeout: float):
        self.endpoints = endpoints
        self.leases = leases
        self.heartbeat_timeout = heartbeat_timeout

    def maintenance(self) -> dict:
        """One round: returns how many endpoints were looked at, leases reclaimed and tasks
        failed (lost their endpoint too often)."""
        now = time.time()
        report = {"endpoints": 0, "reclaimed": 0, "failed": 0}
        redis = self.endpoints.redis
        for eid in self.endpoints.all_endpoint_ids():
            last, session = redis.hmget(keys.endpoint(eid), "last_heartbeat", "session")
            report["endpoints"] += 1
            silent = last is None or now - float(last) > self.heartbeat_timeout
            if silent and session and not self.leases.expire_session(
                    eid, text(session), now - self.heartbeat_timeout):
                continue  # it spoke up meanwhile: look again at the next round
            r, f = self.leases.reclaim(eid, keep_session=None if silent else text(session))
            report["reclaimed"] += r
            report["failed"] += f
        return report
