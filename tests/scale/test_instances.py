"""Three service instances over one Redis behind haproxy (deploy/haproxy/haproxy.cfg), two
endpoints, 20 SDK clients x 1,000 tasks; one instance is SIGKILLed mid-load. Nothing is lost,
no result reaches an SDK twice, and the clients go on by themselves."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from fedcompute import Client
from fedcompute.service.store import keys
from fedcompute.testing import ScaledService

from tests.reliability.helpers import report, result_stream, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

CLIENTS, PROCESSES, TASKS = 20, 2, 1000
SCRIPT = Path(__file__).resolve().parents[1] / "load" / "sdk_clients.py"


def _load(service: ScaledService, home: Path, endpoints: list[str], token: str
          ) -> list[subprocess.Popen]:
    per = CLIENTS // PROCESSES
    procs = []
    for p in range(PROCESSES):
        first = p * per
        procs.append(subprocess.Popen(
            [sys.executable, str(SCRIPT), "--url", service.url,
             "--tokens", ",".join([token] * per),
             "--endpoints", ",".join(endpoints[(first + n) % len(endpoints)] for n in range(per)),
             "--first", str(first), "--tasks", str(TASKS),
             "--ready", str(home / f"ready-{p}"), "--go", str(home / "go")],
            env=service.stack.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    wait_for(lambda: all((home / f"ready-{p}").exists() for p in range(PROCESSES))
             or any(proc.poll() is not None for proc in procs), 300, "the load processes")
    return procs


def _results(procs: list[subprocess.Popen]) -> list[dict]:
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=1000)
        assert proc.returncode == 0, err[-3000:]
        results += [json.loads(line) for line in out.splitlines() if line.strip()]
    return results


def test_an_instance_killed_under_load_loses_nothing(tmp_path_factory):
    home = tmp_path_factory.mktemp("scale")
    with ScaledService(home, instances=3) as service:
        stack = service.stack
        endpoints = [stack.start_endpoint(f"ep{e}", engine={"type": "local", "workers": 1})
                     for e in range(2)]
        procs = _load(service, home, endpoints, stack.token)
        started = time.time()
        (home / "go").touch()
        client = Client(service.url, stack.token)
        redis = service.redis_client()
        # Kill instance 2 once results flow (a twentieth of the tasks done).
        wait_for(lambda: sum(redis.xlen(k) for k in redis.scan_iter(keys.group_results("*")))
                 >= 0.05 * CLIENTS * TASKS, 300, "the first results")
        killed_at = time.time()
        service.kill_instance(2)
        results = _results(procs)
        ended = max(r["ended"] for r in results)
        assert len(results) == CLIENTS
        assert sum(r["wrong"] for r in results) == 0
        assert sum(r["errors"] for r in results) == 0
        delivered = sum(r["delivered"] for r in results)
        twice = sum(r["delivered_twice"] for r in results)
        assert delivered == CLIENTS * TASKS and twice == 0
        for r in results:  # every task once in its group's stream
            stream = result_stream(client, r["group"])
            assert len(stream) == TASKS and set(stream.values()) == {1}
        statuses: Counter = Counter()
        for r in results:
            statuses.update({int(k): v for k, v in r["statuses"].items()})
        report("3 instances behind haproxy, one SIGKILLed: 20 clients x 1,000 tasks",
               tasks=CLIENTS * TASKS, lost=0, delivered_twice=twice,
               killed_after_s=round(killed_at - started, 1),
               wall_s=round(ended - started, 1),
               throughput_tasks_per_s=round(CLIENTS * TASKS / (ended - started), 1),
               http_statuses={str(k): v for k, v in sorted(statuses.items())})
