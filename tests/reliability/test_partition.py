"""The endpoint cannot reach the service for a while (the whole service is stopped) while it
runs thousands of leased tasks: results wait in the endpoint's disk spool and are delivered
after the service is back; no task is lost, none runs twice (the outage is shorter than the
heartbeat timeout, so nothing is reclaimed), and each ends exactly once."""

from __future__ import annotations

import time

import pytest
from fedcompute import Executor
from fedcompute.protocol import unpackb

from .helpers import assert_exactly_once, executions, report, running_stack, wait_for, work

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

N = 3000
MS = 5


def test_service_unreachable_results_spooled_then_delivered(tmp_path_factory):
    home = tmp_path_factory.mktemp("rel-partition")
    log_dir = home / "executions"
    log_dir.mkdir()
    with running_stack(home) as stack:
        spool = home / "endpoints" / "local" / "spool"
        client = stack.client()
        ex = Executor(stack.endpoint_id, client=client)
        futures = [ex.submit(work, i, MS, str(log_dir)) for i in range(N)]
        expected = {f.task_id: 2 * i for i, f in enumerate(futures)}
        wait_for(lambda: sum(f.done() for f in futures) >= N // 5, 300, "a fifth of the tasks")
        stack.stop_service()
        down = time.monotonic()
        in_flight = N - sum(f.done() for f in futures)
        # The endpoint keeps running its leased tasks; their results go to disk.
        wait_for(lambda: len(list(spool.glob("*.msgpack"))) >= 3, 120, "results in the spool")
        time.sleep(3)
        spooled = sum(len(unpackb(f.read_bytes())) for f in spool.glob("*.msgpack"))
        stack.start_service()  # same port, same data folder
        outage = time.monotonic() - down
        figures = assert_exactly_once(client, ex.task_group_id, futures, expected)
        ex.shutdown()
        wait_for(lambda: not list(spool.glob("*.msgpack")), 60, "the spool to drain")
        runs = executions(log_dir)
        assert set(runs) == set(range(N)), "some tasks never ran"
        twice = sorted(i for i, n in runs.items() if n > 1)
        assert not twice, f"{len(twice)} tasks ran twice although nothing was reclaimed"
        report("service unreachable (stopped) while the endpoint runs", in_flight=in_flight,
               results_spooled=spooled, outage_s=round(outage, 1), reran=len(twice), **figures)
