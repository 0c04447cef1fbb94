"""A script exits even when the service is gone: the exit-time flush is bounded, what was not
sent is saved and says how to send it, and sending it later runs every task once."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
from fedcompute import Executor
from fedcompute.protocol import unpackb

pytestmark = pytest.mark.timeout(300)

SCRIPT = """
import sys
from fedcompute import Client, Executor

def square(x):
    return x * x

client = Client(sys.argv[1], "fcu_whatever", retries=0)
ex = Executor(sys.argv[2], client=client, task_group_id=sys.argv[3])
ex._function_ids[square] = sys.argv[4]  # registered already, as a long-running script would
futures = [ex.submit(square, i) for i in range(50)]
ex.shutdown(wait=False, cancel_futures=False)
print("submitted", flush=True)
"""


def _dead_url() -> str:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_exit_is_bounded_and_unsent_tasks_are_resubmitted(fed_stack, tmp_path):
    client = fed_stack.client()

    def square(x):
        return x * x

    function_id = client.register_function(square)
    group = "0b8f1a5e-4d2c-4a57-9d1e-3c4b5a6d7e8f"
    env = {**os.environ, "FEDCOMPUTE_HOME": str(tmp_path), "FEDCOMPUTE_EXIT_FLUSH_TIMEOUT": "2"}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", SCRIPT, _dead_url(), fed_stack.endpoint_id,
                           group, function_id], env=env, capture_output=True, text=True,
                          timeout=60)
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert took < 20, f"exit took {took:.1f}s with the service gone"
    assert "50 tasks could not be sent" in done.stderr and "fedcompute task resubmit" in done.stderr
    [saved] = list((tmp_path / "unsent").glob("*.msgpack"))
    assert (saved.stat().st_mode & 0o777) == 0o600
    content = unpackb(saved.read_bytes())
    assert content["task_group_id"] == group and len(content["batches"][0]["tasks"]) == 50

    def resubmit() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fedcompute.cli", "task", "resubmit",
                               str(saved)], env=fed_stack.env, capture_output=True, text=True,
                              timeout=120)

    first, again = resubmit(), resubmit()  # the second changes nothing: same task ids
    assert first.returncode == 0 and "sent 50 tasks" in first.stdout, first.stderr
    assert again.returncode == 0, again.stderr
    futures = Executor(fed_stack.endpoint_id, client=client).reload_tasks(group)
    assert len(futures) == 50
    assert sorted(f.result(timeout=120) for f in futures) == sorted(i * i for i in range(50))


def test_shutdown_cancel_futures_does_not_wait_for_a_dead_service():
    from fedcompute import Client
    from fedcompute.executor import _live

    ex = Executor("0b8f1a5e-4d2c-4a57-9d1e-3c4b5a6d7e80",
                  client=Client(_dead_url(), "fcu_x", retries=0))
    ex._function_ids[pow] = "0b8f1a5e-4d2c-4a57-9d1e-3c4b5a6d7e81"
    futures = [ex.submit(pow, 2, i) for i in range(10)]
    started = time.monotonic()
    ex.shutdown(wait=False, cancel_futures=True)
    assert time.monotonic() - started < 2
    in_flight = {f.task_id for f, _, _ in ex._submitter._in_flight}
    # what was still queued is cancelled here; a batch already on its way cannot be
    assert {f.task_id for f in futures if not f.cancelled()} <= in_flight
    _live.discard(ex)  # this process's exit must not wait for it
