"""Issue 2's fault cases, on a private stack (they kill parts of it): an endpoint SIGKILLed
mid-task then restarted completes the task; a restarted service keeps its queued tasks."""

from __future__ import annotations

import signal
import time

import pytest
from fedcompute import Executor

from tests.reliability.helpers import executions, running_stack, wait_for

pytestmark = pytest.mark.timeout(600)


def slow_square(x, seconds, log_dir):
    import os
    import time

    with open(os.path.join(log_dir, f"{os.getpid()}.log"), "a") as f:
        f.write(f"{x}\n")
    time.sleep(seconds)
    return x * x


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("core-faults")) as stack:
        yield stack


def test_endpoint_sigkilled_mid_task_then_restarted_completes_it(stack, tmp_path):
    client = stack.client()
    with Executor(stack.endpoint_id, client=client) as ex:
        future = ex.submit(slow_square, 7, 4.0, str(tmp_path))
        wait_for(lambda: executions(tmp_path)[7] == 1, 120, "the task to start running")
        wait_for(lambda: client.get_task(future.task_id)["status"] == "running", 30,
                 "the service to see it running")
        stack.stop_endpoint("local", sig=signal.SIGKILL)
        assert not future.done()
        stack.start_endpoint("local")
        assert future.result(timeout=300) == 49
    info = client.get_task(future.task_id)
    assert info["status"] == "success" and info["attempts"] == 1
    assert executions(tmp_path)[7] == 2, "it ran again on the restarted endpoint"


def test_service_restart_keeps_queued_tasks(stack, tmp_path):
    stack.stop_endpoint("local")  # nobody takes the tasks: they stay queued in the service
    client = stack.client()
    # A graceful stop ends the agent's session at once (no wait for the heartbeat timeout), and
    # the long-poll it left blocked in the service hands what it receives back to the queue
    # (the "waiting-for-endpoint" check below).
    assert client.get_endpoint_status(stack.endpoint_id)["status"] == "offline"
    ex = Executor(stack.endpoint_id, client=client)
    futures = [ex.submit(slow_square, i, 0, str(tmp_path)) for i in range(100)]
    assert ex.flush(60) == []  # every task reached the service
    assert len(client.get_task_group(ex.task_group_id)) == 100
    states = {r["status"] for r in client.get_batch_result([f.task_id for f in futures]).values()}
    assert states == {"waiting-for-endpoint"}
    stack.stop_service()
    time.sleep(1)
    stack.start_service()  # same port and data folder: Valkey reloads its append-only file
    assert client.get_endpoint_status(stack.endpoint_id)["queued"] == 100
    stack.start_endpoint("local")
    # The executor's result stream reconnects by itself.
    assert [f.result(timeout=300) for f in futures] == [i * i for i in range(100)]
    ex.shutdown()
