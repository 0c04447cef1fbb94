"""SIGKILL the endpoint agent (and its Dask cluster) mid-batch, restart it: every task completes,
each finishes exactly once in the SDK's view, none is lost."""

from __future__ import annotations

import signal
import time

import pytest
from fedcompute import Executor

from .helpers import assert_exactly_once, executions, report, running_stack, wait_for, work

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

N = 3000
MS = 3


def test_sigkill_endpoint_mid_batch_then_restart(tmp_path_factory):
    home = tmp_path_factory.mktemp("rel-endpoint-kill")
    log_dir = home / "executions"
    log_dir.mkdir()
    with running_stack(home) as stack:
        client = stack.client()
        ex = Executor(stack.endpoint_id, client=client)
        futures = [ex.submit(work, i, MS, str(log_dir)) for i in range(N)]
        expected = {f.task_id: 2 * i for i, f in enumerate(futures)}
        wait_for(lambda: sum(f.done() for f in futures) >= N // 4, 180, "a quarter of the tasks")
        done_at_kill = sum(f.done() for f in futures)
        stack.stop_endpoint("local", sig=signal.SIGKILL)
        t0 = time.monotonic()
        stack.start_endpoint("local")
        figures = assert_exactly_once(client, ex.task_group_id, futures, expected)
        ex.shutdown()
        runs = executions(log_dir)
        assert set(runs) == set(range(N)), "some tasks never ran"
        report("endpoint SIGKILL mid-batch + restart", in_flight=N - done_at_kill,
               reran=sum(1 for n in runs.values() if n > 1),
               recovery_s=round(time.monotonic() - t0, 1), **figures)
