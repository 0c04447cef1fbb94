"""CPU microseconds per task of each process on the task path, during a no-op map.

    .venv/bin/python bench/profile_cpu.py [--tasks 30000] [--py-spy]

Starts the embedded stack (one endpoint, 2 workers), maps ``--tasks`` no-op tasks through it
and prints, per process kind (SDK, API, Valkey, RQ, agent, Dask workers, lane executors), the
CPU time it used divided by the number of tasks, then the Valkey commands per task (``INFO
commandstats``: the scripts' own ``redis.call``s are counted one by one). With ``--py-spy`` it also records each
process's hottest functions (py-spy, ``--nonblocking``) and prints the top 8 of each.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil


def noop(x):
    return x


def kinds(stack) -> dict[str, list[psutil.Process]]:
    out: dict[str, list[psutil.Process]] = collections.defaultdict(list)
    for proc in psutil.Process(stack.service.pid).children(recursive=True):
        cmd = " ".join(proc.cmdline())
        if "gunicorn" in cmd and "worker" in cmd:
            out["api"].append(proc)
        elif "valkey" in cmd:
            out["valkey"].append(proc)
        elif cmd.startswith("rq:"):
            out["rq"].append(proc)
    for agent_proc in stack.endpoints.values():
        agent = psutil.Process(agent_proc.pid)
        out["agent"].append(agent)
        for proc in agent.children(recursive=True):
            cmd = " ".join(proc.cmdline())
            out["lane executors" if "lane.executor" in cmd else "dask workers"].append(proc)
    out["sdk"].append(psutil.Process())
    return out


def cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


def valkey(stack):
    """A connection to the stack's Valkey (its URL is in the service's state file)."""
    import json

    from fedcompute.service.store.connection import connect

    state = json.loads((stack.home / "service" / "service.json").read_text())
    return connect(state["redis_url"])


def command_counts(redis) -> collections.Counter:
    return collections.Counter({name.removeprefix("cmdstat_"): int(stats["calls"])
                                for name, stats in redis.info("commandstats").items()})


def spy(pid: int, seconds: float, out: Path) -> subprocess.Popen:
    return subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record",
                             "--nonblocking", "-d", str(int(seconds)), "-r", "200", "-f", "raw",
                             "-o", str(out), "-p", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def top(raw: Path, n: int = 8) -> list[tuple[str, float]]:
    counts: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frame = stack.split(";")[-1] if stack else "?"
        counts[frame] += int(count)
        total += int(count)
    return [(f, c / total * 100) for f, c in counts.most_common(n)] if total else []


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=30_000)
    parser.add_argument("--py-spy", action="store_true")
    args = parser.parse_args()
    from fedcompute import Executor
    from fedcompute.testing import LocalStack

    home = Path(tempfile.mkdtemp(prefix="fedprof-"))
    stack = LocalStack(home, workers=2).up()
    try:
        ex = Executor(stack.endpoint_id, client=stack.client())
        for f in [ex.submit(noop, i) for i in range(2000)]:  # warm: workers, lanes, caches
            f.result()
        groups = kinds(stack)
        redis = valkey(stack)
        commands = command_counts(redis)
        before = {k: cpu(v) for k, v in groups.items()}
        spies = []
        if args.py_spy:
            for kind, procs in groups.items():
                for i, proc in enumerate(procs[:2]):
                    path = home / f"{kind.replace(' ', '_')}-{i}.txt"
                    spies.append((kind, path, spy(proc.pid, 8, path)))
        started = time.perf_counter()
        for f in [ex.submit(noop, i) for i in range(args.tasks)]:
            f.result()
        took = time.perf_counter() - started
        after = {k: cpu(v) for k, v in groups.items()}
        print(f"{args.tasks} no-op tasks in {took:.1f} s: {args.tasks / took:,.0f} tasks/s\n")
        print(f"{'process':<16} {'CPU µs/task':>12}")
        total = 0.0
        for kind in groups:
            per = (after[kind] - before[kind]) / args.tasks * 1e6
            total += per
            print(f"{kind:<16} {per:12.0f}")
        print(f"{'total':<16} {total:12.0f}")
        commands = command_counts(redis) - commands
        print(f"\n{'Valkey command':<16} {'per task':>12}")
        for name, calls in commands.most_common(16):
            print(f"{name:<16} {calls / args.tasks:12.2f}")
        print(f"{'total':<16} {commands.total() / args.tasks:12.2f}")
        for kind, path, proc in spies:
            proc.wait(60)
            if path.exists():
                print(f"\n{kind} ({path.name}):")
                for frame, share in top(path):
                    print(f"  {share:5.1f}%  {frame[:110]}")
        ex.shutdown()
    finally:
        stack.down()


if __name__ == "__main__":
    main()
