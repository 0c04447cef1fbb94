"""Fire and forget (issue 2): submit in one Python process that then exits, collect the results
from another process with ``Executor.reload_tasks`` or by task id."""

from __future__ import annotations

import json
import subprocess
import sys

from fedcompute import Executor

N = 500

# Submits and exits at once: no shutdown(), no waiting. The function lives in __main__, so it
# travels by value.
SUBMITTER = """
import json, sys
from fedcompute import Executor

def square(x):
    return x * x

ex = Executor(endpoint_id=sys.argv[1])
futures = [ex.submit(square, i) for i in range(int(sys.argv[2]))]
print(json.dumps({"group": str(ex.task_group_id), "tasks": [f.task_id for f in futures]}))
"""


def test_submit_exit_then_collect_in_another_process(fed_stack):
    done = subprocess.run([sys.executable, "-c", SUBMITTER, fed_stack.endpoint_id, str(N)],
                          env=fed_stack.env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    submitted = json.loads(done.stdout)
    # The submitting process is gone; a new one reattaches to its task group.
    ex = Executor(fed_stack.endpoint_id, client=fed_stack.client())
    futures = ex.reload_tasks(submitted["group"])
    assert [f.task_id for f in futures] == submitted["tasks"], "every task reached the service"
    assert [f.result(timeout=300) for f in futures] == [i * i for i in range(N)]
    ex.shutdown()
    # ...or by task id, Globus Compute style, from yet another client.
    client = fed_stack.client()
    assert client.get_result(submitted["tasks"][7]) == 49
    results = client.get_batch_result(submitted["tasks"][:10])
    assert [results[t]["result"] for t in submitted["tasks"][:10]] == [i * i for i in range(10)]
