"""Load: 50 concurrent SDK clients x 1,000 tasks (5 processes x 10 clients, 5 users) against one
service and 3 endpoints. No 5xx, every result correct and in its result stream exactly once,
the service's memory bounded; prints throughput and latency percentiles."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
from fedcompute import Client

from tests.reliability.helpers import (
    process_tree,
    report,
    result_stream,
    running_stack,
    service_redis,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

CLIENTS = 50
PROCESSES = 5
TASKS = 1000
USERS = 5
ENDPOINTS = 3
#: Resident memory the service (supervisor, gunicorn, RQ worker, Valkey holding all 50,000
#: finished tasks) may use at its peak. Measured ~0.4 GiB; a leak per task or per request
#: would cross it.
MAX_SERVICE_RSS = 1.5 * 1024**3

SCRIPT = Path(__file__).with_name("sdk_clients.py")


def _rss_by_role(stack) -> dict[str, int]:
    out: Counter = Counter()
    for proc in process_tree(stack.service.pid):
        try:
            cmd = " ".join(proc.cmdline())
            rss = proc.memory_info().rss
        except Exception:  # noqa: BLE001 - exited meanwhile
            continue
        role = ("api" if "gunicorn" in cmd else "valkey" if "valkey" in cmd
                else "rq" if cmd.startswith("rq:") else "supervisor")
        out[role] += rss
    return dict(out)


def test_50_clients_x_1000_tasks(tmp_path_factory):
    home = tmp_path_factory.mktemp("load")
    with running_stack(home, workers=1, endpoint=False) as stack:
        users = {f"user{u}": stack.create_user(f"user{u}") for u in range(USERS)}
        endpoints = [stack.start_endpoint(f"ep{e}", shared_with=list(users),
                                          engine={"type": "local", "workers": 1})
                     for e in range(ENDPOINTS)]
        tokens = list(users.values())
        per = CLIENTS // PROCESSES
        go = home / "go"
        procs = []
        for p in range(PROCESSES):
            first = p * per
            procs.append(subprocess.Popen(
                [sys.executable, str(SCRIPT), "--url", stack.service_url,
                 "--tokens", ",".join(tokens[(first + n) % USERS] for n in range(per)),
                 "--endpoints", ",".join(endpoints[(first + n) % ENDPOINTS] for n in range(per)),
                 "--first", str(first), "--tasks", str(TASKS),
                 "--ready", str(home / f"ready-{p}"), "--go", str(go)],
                env=stack.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        wait_for(lambda: all((home / f"ready-{p}").exists() for p in range(PROCESSES))
                 or any(proc.poll() is not None for proc in procs), 300,
                 "every load process to be ready")
        go.touch()
        peak: dict[str, int] = {}
        peak_total = 0
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak_total
            while not stop.wait(0.5):
                now = _rss_by_role(stack)
                peak_total = max(peak_total, sum(now.values()))
                for role, rss in now.items():
                    peak[role] = max(peak.get(role, 0), rss)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=1700)
            assert proc.returncode == 0, err[-3000:]
            results += [json.loads(line) for line in out.splitlines() if line.strip()]
        stop.set()
        sampler.join()

        assert len(results) == CLIENTS
        statuses: Counter = Counter()
        for r in results:
            statuses.update({int(k): v for k, v in r["statuses"].items()})
        assert not {s: n for s, n in statuses.items() if s >= 500}, statuses
        assert sum(r["wrong"] for r in results) == 0
        assert sum(r["errors"] for r in results) == 0
        latencies = sorted(x for r in results for x in r["latencies"])
        assert len(latencies) == CLIENTS * TASKS
        # Every task is in its group's result stream exactly once.
        for r, token in zip(sorted(results, key=lambda r: r["client"]),
                            [tokens[i % USERS] for i in range(CLIENTS)], strict=True):
            stream = result_stream(Client(stack.service_url, token), r["group"])
            assert len(stream) == TASKS and set(stream.values()) == {1}
        api_log = (home / "service" / "logs" / "api.log").read_text()
        assert "unhandled error" not in api_log and "Traceback" not in api_log
        assert peak_total < MAX_SERVICE_RSS, peak
        began = min(r["began"] for r in results)
        ended = max(r["ended"] for r in results)
        used_memory = service_redis(stack).info("memory")["used_memory"]
        figures = {
            "tasks": len(latencies), "lost": 0, "clients": CLIENTS, "endpoints": ENDPOINTS,
            "wall_s": round(ended - began, 1),
            "throughput_tasks_per_s": round(len(latencies) / (ended - began), 1),
            "latency_p50_s": round(statistics.median(latencies), 2),
            "latency_p99_s": round(latencies[int(0.99 * len(latencies)) - 1], 2),
            "latency_max_s": round(latencies[-1], 2),
            "http_requests": sum(statuses.values()),
            "http_statuses": {str(k): v for k, v in sorted(statuses.items())},
            "service_peak_rss_mib": round(peak_total / 2**20),
            "peak_rss_mib_by_process": {k: round(v / 2**20) for k, v in sorted(peak.items())},
            "valkey_used_memory_mib": round(used_memory / 2**20),
        }
        report("load: 50 SDK clients x 1,000 tasks, 3 endpoints", **figures)
