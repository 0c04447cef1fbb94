"""Throughput and latency of the federated path against raw Dask and Parsl, in one run.

    .venv/bin/python bench/throughput.py [--workers 2] [--runs 3] [--big 100000]
                                         [--stream-output]

Starts what it needs on 127.0.0.1 (the embedded stack with one endpoint, a Dask LocalCluster,
a Parsl HighThroughputExecutor with a LocalProvider), all with the same number of worker
processes, and prints one table: medians of ``--runs`` runs, and ratios against the peers
measured in this same run. Machines here are shared and noisy: compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil


def noop(x):
    return x


def sleep10(x):
    import time  # Parsl ships __main__ functions without their module's globals

    time.sleep(0.01)
    return x


def median_of(runs: int, fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(runs))


def latencies(submit_and_wait: Callable[[], None], n: int = 500) -> tuple[float, float]:
    for _ in range(20):  # warm up connections, caches and worker imports
        submit_and_wait()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        submit_and_wait()
        samples.append(time.perf_counter() - start)
    samples.sort()
    return samples[len(samples) // 2] * 1e3, samples[int(len(samples) * 0.99) - 1] * 1e3


# --- the three systems ------------------------------------------------------------------

class Fed:
    name = "fedcompute"

    stream_output = False

    def __init__(self, workers: int):
        from fedcompute import Executor
        from fedcompute.testing import LocalStack

        self.stack = LocalStack(Path(tempfile.mkdtemp(prefix="fedbench-")), workers=workers).up()
        self.client = self.stack.client()
        self.ex = Executor(self.stack.endpoint_id, client=self.client,
                           stream_output=self.stream_output)
        self.ex.submit(noop, 0).result()

    def throughput(self, fn, n: int) -> float:
        start = time.perf_counter()
        futures = [self.ex.submit(fn, i) for i in range(n)]
        for f in futures:
            f.result()
        return n / (time.perf_counter() - start)

    def one(self) -> None:
        self.ex.submit(noop, 1).result()

    def accept_rate(self, batch: int, total: int = 20_000) -> float:
        """The service alone: tasks/s accepted for an endpoint whose agent is not running."""
        import uuid

        from fedcompute import serialize

        sink = getattr(self, "_sink", None)
        if sink is None:
            sink = self._sink = self.client.register_endpoint("bench-sink")["endpoint_id"]
            self._fid = self.client.register_function(noop)
        payload = serialize.serialize_args((1,), {})
        requests = max(total // batch, 20)
        tasks = [[{"task_id": str(uuid.uuid4()), "function_id": self._fid, "payload": payload}
                  for _ in range(batch)] for _ in range(requests)]
        start = time.perf_counter()
        for chunk in tasks:
            self.client.submit_tasks(sink, chunk)
        return requests * batch / (time.perf_counter() - start)

    def sdk_memory(self, n: int) -> float:
        """MB of client RSS for ``n`` outstanding futures (tasks parked on the sink endpoint),
        measured in a fresh process so nothing else in this one counts."""
        import subprocess

        self.accept_rate(1, 1)  # registers the sink
        out = subprocess.run(
            [sys.executable, __file__, "--sdk-memory", str(n), "--sink", self._sink],
            env={**os.environ, "FEDCOMPUTE_SERVICE_URL": self.stack.service_url,
                 "FEDCOMPUTE_TOKEN": self.stack.token},
            capture_output=True, text=True, check=True, timeout=600)
        return float(out.stdout.strip().splitlines()[-1])

    def close(self) -> None:
        self.ex.shutdown(wait=False)
        self.stack.down()


class FedStreaming(Fed):
    """The same, each task's output streamed live (``Executor(stream_output=True)``)."""

    name = "fed+stream"
    stream_output = True


class RawDask:
    name = "Dask"

    def __init__(self, workers: int):
        from distributed import Client, LocalCluster

        self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                    host="127.0.0.1", dashboard_address=None)
        self.client = Client(self.cluster)

    def throughput(self, fn, n: int) -> float:
        start = time.perf_counter()
        self.client.gather(self.client.map(fn, range(n), pure=False))
        return n / (time.perf_counter() - start)

    def one(self) -> None:
        self.client.submit(noop, 1, pure=False).result()

    def close(self) -> None:
        self.client.close()
        self.cluster.close()


class Parsl:
    name = "Parsl HTEX"

    def __init__(self, workers: int):
        import parsl
        from parsl.config import Config
        from parsl.executors import HighThroughputExecutor
        from parsl.providers import LocalProvider

        # Parsl launches its interchange and worker pool as scripts from the environment's bin.
        bindir = os.path.dirname(sys.executable)
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
        self.run_dir = tempfile.mkdtemp(prefix="parslbench-")
        self.dfk = parsl.load(Config(
            executors=[HighThroughputExecutor(
                label="htex", max_workers_per_node=workers, address="127.0.0.1",
                loopback_address="127.0.0.1",
                provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1))],
            run_dir=self.run_dir, usage_tracking=0))
        self.apps = {fn: parsl.python_app(fn, executors=["htex"]) for fn in (noop, sleep10)}
        self.apps[noop](0).result()

    def throughput(self, fn, n: int) -> float:
        app = self.apps[fn]
        start = time.perf_counter()
        futures = [app(i) for i in range(n)]
        for f in futures:
            f.result()
        return n / (time.perf_counter() - start)

    def one(self) -> None:
        self.apps[noop](1).result()

    def close(self) -> None:
        self.dfk.cleanup()


# --- the run ----------------------------------------------------------------------------

def sdk_memory_child(n: int, sink: str) -> None:
    from fedcompute import Executor

    gc.collect()
    before = psutil.Process().memory_info().rss
    ex = Executor(sink)
    futures = [ex.submit(noop, i) for i in range(n)]
    assert ex.flush() == []  # all sent, all still outstanding
    print((psutil.Process().memory_info().rss - before) / 1e6, len(futures))
    print((psutil.Process().memory_info().rss - before) / 1e6)
    os._exit(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--big", type=int, default=100_000)
    parser.add_argument("--big-runs", type=int, default=1)
    parser.add_argument("--latency-calls", type=int, default=500)
    parser.add_argument("--skip", nargs="*", default=[], help="Dask and/or Parsl")
    parser.add_argument("--stream-output", action="store_true",
                        help="also measure fedcompute with live output streamed")
    parser.add_argument("--sdk-memory", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--sink", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sdk_memory:
        return sdk_memory_child(args.sdk_memory, args.sink)
    w = args.workers
    rows: dict[str, dict[str, float]] = {}

    systems = [Fed] + [FedStreaming] * args.stream_output + [
        c for c in (RawDask, Parsl) if c.name.split()[0] not in args.skip]
    for cls in systems:
        print(f"... {cls.name}", flush=True)
        system = cls(w)
        try:
            r = rows.setdefault(cls.name, {})
            r["noop 10k /s"] = median_of(args.runs, lambda s=system: s.throughput(noop, args.small))
            r["noop 100k /s"] = median_of(args.big_runs,
                                          lambda s=system: s.throughput(noop, args.big))
            r["p50 ms"], r["p99 ms"] = latencies(system.one, args.latency_calls)
            sleep_n = 100 * w * 5
            r["10ms eff %"] = 100 * median_of(
                args.runs, lambda s=system, n=sleep_n: s.throughput(sleep10, n)) / (100 * w)
            if type(system) is Fed:
                r["sdk MB/100k fut"] = system.sdk_memory(100_000)
                accept = {b: median_of(args.runs, lambda b=b, s=system: s.accept_rate(b))
                          for b in (1, 10, 100, 1000, 5000)}
        finally:
            system.close()

    cols = ["noop 10k /s", "noop 100k /s", "p50 ms", "p99 ms", "10ms eff %"]
    print(f"\nfedcompute benchmark — {w} worker processes, {os.cpu_count()} cores, medians of "
          f"{args.runs} runs ({args.big_runs} for 100k)\n")
    print(f"{'system':<12}" + "".join(f"{c:>15}" for c in cols))
    for name, r in rows.items():
        print(f"{name:<12}" + "".join(f"{r.get(c, float('nan')):>15.1f}" for c in cols))
    fed = rows["fedcompute"]
    for peer in (n for n in rows if n != "fedcompute"):
        p = rows[peer]
        print(f"\nfedcompute vs {peer}: throughput 10k x{fed['noop 10k /s'] / p['noop 10k /s']:.2f}, "
              f"100k x{fed['noop 100k /s'] / p['noop 100k /s']:.2f}; "
              f"p50 {fed['p50 ms']:.2f} vs {p['p50 ms']:.2f} ms "
              f"(x{fed['p50 ms'] / p['p50 ms']:.2f})")
    print(f"\nSDK memory for 100k outstanding futures: {fed['sdk MB/100k fut']:.0f} MB")
    print("service alone, tasks/s accepted per request size: " +
          ", ".join(f"{b}: {v:,.0f}" for b, v in accept.items()))


if __name__ == "__main__":
    main()
