"""Background work, run by RQ workers (never one job per task).

* ``maintenance``: reclaims leases of silent endpoints (requeue, or fail after
  ``max_attempts`` with ``EndpointLost``) and of replaced agent sessions.
* ``fanout``: writes a large submitted batch in slices so the API request returns at once.

Expiry of old tasks and results is Redis's own (every record carries a TTL), so no sweeper is
needed for it; the maintenance job trims nothing else.
"""

from __future__ import annotations

import logging
import uuid

from fedcompute.protocol import TaskSpec, packb, unpackb

from .context import FedContext
from .settings import Settings
from .store import Store, keys

log = logging.getLogger(__name__)
FANOUT_SLICE = 2000


def _store(redis_url: str) -> Store:
    return Store(redis_url, Settings.from_env(redis_url=redis_url))


def maintenance(redis_url: str) -> dict:
    report = _store(redis_url).maintenance()
    if report["reclaimed"] or report["failed"]:
        log.warning("reclaimed %(reclaimed)d leases, failed %(failed)d tasks", report)
    if report.get("deadline") or report.get("expired"):
        log.warning("failed %(deadline)d tasks not started by their deadline and %(expired)d "
                    "about to expire unfinished", report)
    return report


def enqueue_fanout(ctx: FedContext, owner: str, endpoint_id: str, group: str,
                   tasks: list[TaskSpec]) -> None:
    key = keys.fanout(str(uuid.uuid4()))
    ctx.store.redis.set(key, packb([t.model_dump() for t in tasks]), ex=ctx.settings.task_ttl)
    ctx.queue.enqueue(fanout, ctx.store.url, key, owner, endpoint_id, group,
                      job_timeout=600, result_ttl=600, failure_ttl=7 * 24 * 3600)


def fanout(redis_url: str, key: str, owner: str, endpoint_id: str, group: str) -> int:
    """Write a big batch in slices; safe to rerun (task ids make submission idempotent)."""
    store = _store(redis_url)
    raw = store.redis.get(key)
    if raw is None:
        return 0
    tasks = [TaskSpec.model_construct(**t) for t in unpackb(raw)]  # validated when sent
    for i in range(0, len(tasks), FANOUT_SLICE):
        store.submit(owner, endpoint_id, group, tasks[i:i + FANOUT_SLICE])
    store.redis.delete(key)
    return len(tasks)
