"""The service's embedded Redis (Valkey with an append-only file) dies under load — SIGKILL, no
chance to flush anything — and is restarted by the service from its AOF: no task or result is
lost and each task ends exactly once. A graceful restart of the whole service keeps finished
results too."""

from __future__ import annotations

import pytest
from fedcompute import Executor

from .helpers import (
    assert_exactly_once,
    executions,
    kill_pids,
    report,
    result_stream,
    running_stack,
    wait_for,
    work,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

N = 3000
MS = 3


def test_sigkill_embedded_redis_under_load(tmp_path_factory):
    home = tmp_path_factory.mktemp("rel-redis-kill")
    log_dir = home / "executions"
    log_dir.mkdir()
    with running_stack(home, max_tasks_per_lease=200, max_outstanding=600,
                       engine={"type": "local", "workers": 2}) as stack:
        client = stack.client()
        ex = Executor(stack.endpoint_id, client=client)
        futures = [ex.submit(work, i, MS, str(log_dir)) for i in range(N)]
        expected = {f.task_id: 2 * i for i, f in enumerate(futures)}
        in_flight = []
        for fraction in (4, 2):
            wait_for(lambda f=fraction: sum(x.done() for x in futures) >= N // f, 300,
                     f"1/{fraction} of the tasks")
            in_flight.append(N - sum(f.done() for f in futures))
            old = stack.service_children()["redis"]
            kill_pids([old])
            wait_for(lambda o=old: stack.service_children().get("redis") not in (None, o), 60,
                     "the service to restart its Redis")
        figures = assert_exactly_once(client, ex.task_group_id, futures, expected)
        ex.shutdown()
        runs = executions(log_dir)
        assert set(runs) == set(range(N)), "some tasks never ran"
        status = client.get_endpoint_status(stack.endpoint_id)
        assert (status["queued"], status["leased"]) == (0, 0)
        report("embedded Redis SIGKILLed twice under load", in_flight=max(in_flight),
               reran=sum(1 for n in runs.values() if n > 1), **figures)

        # Stop the whole service (Valkey flushes its AOF on SIGTERM) and start it again:
        # every result is still there, in the stream and by task id.
        stack.stop_service()
        stack.start_service()
        client = stack.client()
        assert result_stream(client, ex.task_group_id) == {tid: 1 for tid in expected}
        records = client.get_batch_result(list(expected))
        assert all(records[tid]["result"] == value for tid, value in expected.items())
