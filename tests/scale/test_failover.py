"""Redis failover under load: the service runs on a Sentinel-managed Valkey (a primary, a
replica, three Sentinels) and acknowledges submissions and results only once the replica has
them (FEDCOMPUTE_REDIS_MIN_REPLICAS=1). The primary is SIGKILLed mid-load (and restarted, as a
process supervisor would, to rejoin as a replica): nothing acknowledged is lost."""

from __future__ import annotations

import time

import pytest
from fedcompute import Client
from fedcompute.service.store import keys
from fedcompute.testing import ScaledService, SentinelRedis

from tests.reliability.helpers import report, result_stream, wait_for

from .test_instances import _load, _results

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

CLIENTS, TASKS = 20, 1000


def test_sentinel_failover_loses_nothing_acknowledged(tmp_path_factory):
    home = tmp_path_factory.mktemp("failover")
    with SentinelRedis(home / "redis", replicas=1) as redis_ha, \
            ScaledService(home, instances=3, redis_url=redis_ha.url,
                          env={"FEDCOMPUTE_REDIS_MIN_REPLICAS": "1"}) as service:
        stack = service.stack
        endpoints = [stack.start_endpoint(f"ep{e}", engine={"type": "local", "workers": 1})
                     for e in range(2)]
        procs = _load(service, home, endpoints, stack.token)
        started = time.time()
        (home / "go").touch()
        redis = service.redis_client()
        wait_for(lambda: sum(redis.xlen(k) for k in redis.scan_iter(keys.group_results("*")))
                 >= 0.05 * CLIENTS * TASKS, 300, "the first results")
        old = redis_ha.primary_port()
        killed_at = time.time()
        redis_ha.kill_primary()
        new = wait_for(lambda: redis_ha.primary_port() != old and redis_ha.primary_port(), 60,
                       "a Sentinel failover")
        failed_over_s = time.time() - killed_at
        time.sleep(2)
        redis_ha.restart(old)  # rejoins as the new primary's replica
        results = _results(procs)
        ended = max(r["ended"] for r in results)
        assert sum(r["wrong"] for r in results) == 0 and sum(r["errors"] for r in results) == 0
        assert sum(r["delivered"] for r in results) == CLIENTS * TASKS
        assert sum(r["delivered_twice"] for r in results) == 0
        client = Client(service.url, stack.token)
        for r in results:
            stream = result_stream(client, r["group"])
            assert len(stream) == TASKS and set(stream.values()) == {1}
        report("Sentinel failover (primary SIGKILLed) under 20 clients x 1,000 tasks",
               tasks=CLIENTS * TASKS, lost=0, old_primary=old, new_primary=new,
               killed_after_s=round(killed_at - started, 1),
               failover_s=round(failed_over_s, 1), wall_s=round(ended - started, 1))
