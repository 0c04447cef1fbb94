"""Dask through the fedcompute relay vs Dask direct, on the same scheduler and workers.

Starts a fedcompute service (gunicorn + RQ worker + embedded Valkey) and an endpoint agent (a
Dask LocalCluster; the agent runs the Dask bridge), then measures, alternating the two clients on each round:

* ``Client(FederatedCluster(endpoint_id))`` — over ``fed://``: client -> service relay -> endpoint
* ``Client("tcp://<endpoint scheduler>")`` — direct TCP to the same scheduler (loopback)

for: tasks/s of a 10k ``client.map``, submit -> result latency (p50 of sequential round trips),
and a 50 MB ``scatter`` + ``gather``. Prints medians over ``--repeat`` rounds and the ratios.
Targets: >= 80 % of direct throughput, p50 within 2 ms of direct.

    .venv/bin/python bench/dask_relay.py [--repeat 5] [--tasks 10000] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def inc(x: int) -> int:
    return x + 1


def identity(x: object) -> object:
    return x


def measure(client, tasks: int, latency_rounds: int, blob: bytes) -> dict[str, float]:
    """One round of the three measurements with ``client``."""
    out: dict[str, float] = {}
    client.submit(inc, 0, pure=False).result()  # warm: functions and connections
    start = time.perf_counter()
    futures = client.map(inc, range(tasks), pure=False)
    results = client.gather(futures)
    out["map_tps"] = tasks / (time.perf_counter() - start)
    assert results[-1] == tasks
    del futures
    lat = []
    for i in range(latency_rounds):
        t = time.perf_counter()
        client.submit(identity, i, pure=False).result()
        lat.append(time.perf_counter() - t)
    out["p50_ms"] = statistics.median(lat) * 1000
    start = time.perf_counter()
    future = client.scatter(blob)
    back = client.gather(future)
    out["scatter_gather_s"] = time.perf_counter() - start
    assert len(back) == len(blob)
    del future, back
    return out


def run(args: argparse.Namespace) -> None:
    import yaml
    from distributed import Client
    from fedcompute import Client as FedClient
    from fedcompute.plugins.dask import FederatedCluster

    home = Path(tempfile.mkdtemp(prefix="fedcompute-bench-"))
    env = {**os.environ, "FEDCOMPUTE_HOME": str(home)}
    env.pop("FEDCOMPUTE_REDIS_URL", None)
    procs: list[subprocess.Popen] = []
    try:
        service = subprocess.Popen(
            [sys.executable, "-m", "fedcompute.cli", "service", "start", "--port", "0"],
            env=env, stdout=subprocess.PIPE, stderr=open(home / "service.log", "wb"),  # noqa: SIM115
            start_new_session=True)
        procs.append(service)
        url = json.loads(service.stdout.readline())["url"]
        token = subprocess.run([sys.executable, "-m", "fedcompute.cli", "user", "create", "bench"],
                               env=env, capture_output=True, text=True, check=True).stdout.strip()
        env.update(FEDCOMPUTE_SERVICE_URL=url, FEDCOMPUTE_TOKEN=token)
        # A real endpoint agent (it starts the Dask bridge) on a LocalCluster.
        directory = home / "endpoints" / "bench"
        directory.mkdir(parents=True)
        (directory / "config.yaml").write_text(yaml.safe_dump(
            {"service_url": url, "engine": {"type": "local", "workers": args.workers}}))
        endpoint = subprocess.Popen(
            [sys.executable, "-m", "fedcompute.endpoint.cli", "start", "bench", "--foreground"],
            env=env, stdout=open(home / "endpoint.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(endpoint)
        fed = FedClient(url, token)
        deadline = time.monotonic() + 120
        while True:
            ready = directory / "endpoint.ready"
            if ready.exists():
                endpoint_id = json.loads(ready.read_text())["endpoint_id"]
                if fed.request("GET", f"/endpoints/{endpoint_id}/dask/info")["connected"]:
                    break
            if endpoint.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((home / "endpoint.log").read_text()[-3000:])
            time.sleep(0.2)

        blob = os.urandom(args.mbytes * 2**20)
        cluster = FederatedCluster(endpoint_id, fed)
        scheduler = cluster.scheduler_info["address"]  # loopback: the bench may dial it directly
        clients = {"direct": Client(scheduler), "fedcompute": Client(cluster)}
        rounds: dict[str, list[dict]] = {name: [] for name in clients}
        for i in range(args.repeat):
            order = list(clients) if i % 2 == 0 else list(clients)[::-1]
            for name in order:
                rounds[name].append(measure(clients[name], args.tasks, args.latency_rounds, blob))
                print(f"round {i + 1} {name}: {rounds[name][-1]}", file=sys.stderr)
        for c in clients.values():
            c.close()
        cluster.close()
        report(rounds, args)
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def report(rounds: dict[str, list[dict]], args: argparse.Namespace) -> None:
    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
           for name, rs in rounds.items()}
    d, f = med["direct"], med["fedcompute"]
    rows = [
        (f"{args.tasks} map tasks/s (higher better)", d["map_tps"], f["map_tps"],
         f"{f['map_tps'] / d['map_tps']:.0%} of direct (target >= 80%)"),
        ("submit->result p50 ms", d["p50_ms"], f["p50_ms"],
         f"{f['p50_ms'] - d['p50_ms']:+.2f} ms (target <= +2 ms)"),
        (f"{args.mbytes} MB scatter+gather s", d["scatter_gather_s"], f["scatter_gather_s"],
         f"{f['scatter_gather_s'] / d['scatter_gather_s']:.2f}x direct"),
    ]
    print(f"\nDask direct (tcp://, loopback) vs FederatedCluster (fed://, via the service relay); "
          f"{args.workers} workers, medians of {args.repeat} rounds\n")
    print(f"| {'measure':<34} | {'direct':>10} | {'fedcompute':>10} | ratio")
    print(f"|{'-' * 36}|{'-' * 12}|{'-' * 12}|{'-' * 40}")
    for name, dv, fv, ratio in rows:
        print(f"| {name:<34} | {dv:>10.2f} | {fv:>10.2f} | {ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--latency-rounds", type=int, default=200)
    parser.add_argument("--mbytes", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
