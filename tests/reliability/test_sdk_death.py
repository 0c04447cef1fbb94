"""The SDK process is SIGKILLed after submitting thousands of tasks, while their results
stream in: a new process collects every result with ``reload_tasks``, each exactly once."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from fedcompute import Executor

from .helpers import assert_exactly_once, report, running_stack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

N = 3000

# Submits, waits until the service has every task, reports, then dies mid-stream.
SUBMITTER = """
import json, os, signal, sys, time
from fedcompute import Executor

def work(i):
    time.sleep(0.003)
    return 2 * i

n = int(sys.argv[2])
ex = Executor(endpoint_id=sys.argv[1])
futures = [ex.submit(work, i) for i in range(n)]
while len(ex.client.get_task_group(ex.task_group_id)) < n:
    time.sleep(0.05)
while sum(f.done() for f in futures) < n // 10:
    time.sleep(0.01)
done = sum(f.done() for f in futures)
print(json.dumps({"group": str(ex.task_group_id), "tasks": [f.task_id for f in futures],
                  "done": done}), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_sdk_killed_after_submitting_results_collected_elsewhere(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("rel-sdk-death")) as stack:
        proc = subprocess.run([sys.executable, "-c", SUBMITTER, stack.endpoint_id, str(N)],
                              env=stack.env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == -9, proc.stderr
        submitted = json.loads(proc.stdout)
        client = stack.client()
        ex = Executor(stack.endpoint_id, client=client)
        futures = ex.reload_tasks(submitted["group"])
        assert [f.task_id for f in futures] == submitted["tasks"]
        expected = {tid: 2 * i for i, tid in enumerate(submitted["tasks"])}
        figures = assert_exactly_once(client, submitted["group"], futures, expected)
        ex.shutdown()
        report("SDK process SIGKILLed after submitting", in_flight=N - submitted["done"],
               **figures)
