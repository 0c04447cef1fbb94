"""How the service scales: idle endpoints, concurrent Dask clients, API processes.

    .venv/bin/python bench/scale.py [--idle 0,1000,3000,10000] [--dask-clients 200]
                                    [--tasks 20000] [--parts idle,dask,processes]

* **idle**: N endpoints connected and each holding its lease long-poll (as idle agents do),
  against a user's submit->result p50/p99 on another, real endpoint (100 sequential calls).
  The idle agents run in a separate asyncio process speaking the agent API; the service runs
  ``--idle-api-workers`` API processes (default 2: one per core of the machine measured).
* **dask**: C ``Client(FederatedCluster(...))`` at once through the relay, each in a
  submit->result loop for 20 s: refusals, p50, p99.
* **processes**: the same no-op map through a service with 1 and with 3 API processes:
  tasks/s, and CPU microseconds per task of each process kind.

Everything runs on 127.0.0.1 and is stopped at the end. Figures are medians; the machine is
shared, so compare the rows of one run with each other.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

HERE = Path(__file__).resolve()


def noop(x):
    return x


def inc(x):
    return x + 1


def _percentiles(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    return (samples[len(samples) // 2] * 1e3,
            samples[max(0, int(len(samples) * 0.99) - 1)] * 1e3)


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# --- idle agents (a separate process) ------------------------------------------------------

async def _http(reader, writer, host: str, path: str, token: str, body: bytes) -> int:
    writer.write((f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
                  "Content-Type: application/msgpack\r\nAccept: application/msgpack\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def _idle_agent(url: str, endpoint_id: str, credential: str, stats: dict,
                      stop: asyncio.Event) -> None:
    from fedcompute.protocol import packb

    host, port = url.removeprefix("http://").split(":")
    session = uuid.uuid4().hex
    status = {"workers": 1, "engine": "local", "versions": {"python": "3.11"}}
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(host, int(port))
            code = await _http(reader, writer, host, "/v1/agent/connect", credential,
                               packb({"session": session, "status": status}))
            if code != 200:
                stats["errors"] += 1
                await asyncio.sleep(5)
                continue
            stats["connected"] += 1
            while not stop.is_set():
                code = await _http(reader, writer, host, "/v1/agent/lease", credential, packb(
                    {"session": session, "max_tasks": 1, "wait": 20, "status": status}))
                stats["polls"] += 1
                if code != 200:
                    stats["errors"] += 1
                    stats.setdefault("codes", {}).setdefault(str(code), 0)
                    stats["codes"][str(code)] += 1
            writer.close()
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            stats["errors"] += 1
            stats["connected"] -= 1
            await asyncio.sleep(1)


def idle_agents_main(path: str) -> None:
    """``scale.py --idle-agents FILE``: run the idle agents listed in FILE until SIGTERM."""
    import signal

    _raise_fd_limit()
    spec = json.loads(Path(path).read_text())
    stats = {"connected": 0, "polls": 0, "errors": 0}

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        tasks = []
        for i, (eid, cred) in enumerate(spec["endpoints"]):
            tasks.append(asyncio.create_task(_idle_agent(spec["url"], eid, cred, stats, stop)))
            if i % 200 == 199:
                await asyncio.sleep(0.2)  # ramp up: 1,000 agents a second
        while not stop.is_set():
            print(json.dumps(stats), flush=True)
            try:
                await asyncio.wait_for(stop.wait(), 2)
            except TimeoutError:
                pass
        for task in tasks:
            task.cancel()
        print(json.dumps(stats), flush=True)

    asyncio.run(main())


def _register_idle(stack, n: int, start: int) -> list[tuple[str, str]]:
    from fedcompute.service.auth import ENDPOINT_PREFIX, hash_token, new_token
    from fedcompute.service.server import running_service
    from fedcompute.service.settings import Settings
    from fedcompute.service.store import Store

    url = running_service(stack.home / "service")["redis_url"]
    store = Store(url, Settings.from_env(redis_url=url))
    out = []
    for i in range(start, start + n):
        eid, cred = str(uuid.uuid4()), new_token(ENDPOINT_PREFIX)
        store.put_endpoint(eid, "alice", f"idle{i}", False, [], None, {}, hash_token(cred))
        out.append((eid, cred))
    store.redis.close()
    return out


def part_idle(levels: list[int], api_workers: int = 1) -> list[dict]:
    from fedcompute import Executor
    from fedcompute.testing import LocalStack

    _raise_fd_limit()
    home = Path(tempfile.mkdtemp(prefix="fedscale-idle-"))
    stack = LocalStack(home, workers=1, api_workers=api_workers).up()
    rows = []
    agents = None
    endpoints: list[tuple[str, str]] = []
    try:
        ex = Executor(stack.endpoint_id, client=stack.client())
        for _ in range(20):
            ex.submit(noop, 0).result()
        for level in levels:
            if agents is not None:
                agents.terminate()
                agents.wait(60)
            stats = {"connected": 0, "polls": 0, "errors": 0}
            if level:
                endpoints += _register_idle(stack, level - len(endpoints), len(endpoints))
                spec = home / f"idle-{level}.json"
                spec.write_text(json.dumps({"url": stack.service_url, "endpoints": endpoints}))
                agents = subprocess.Popen([sys.executable, str(HERE), "--idle-agents",
                                           str(spec)], stdout=subprocess.PIPE, text=True)
                deadline = time.monotonic() + 600
                while time.monotonic() < deadline:
                    stats = json.loads(agents.stdout.readline())
                    if stats["connected"] >= level and stats["polls"] >= level:
                        break
                time.sleep(25)  # every agent through at least one full long-poll
            samples, timeouts = [], 0
            for _ in range(100):
                t0 = time.perf_counter()
                try:
                    ex.submit(noop, 1).result(timeout=120)
                except TimeoutError:
                    timeouts += 1
                    if timeouts >= 3:
                        break  # the service is not answering the user: say so, go on
                    continue
                samples.append(time.perf_counter() - t0)
            if agents is not None:
                stats = json.loads(agents.stdout.readline())
            p50, p99 = _percentiles(samples) if samples else (float("nan"), float("nan"))
            api = _api_rss(stack)
            rows.append({"idle endpoints": level, "api processes": api_workers,
                         "p50 ms": round(p50, 1),
                         "p99 ms": round(p99, 1), "agent errors": stats["errors"],
                         "agent error codes": stats.get("codes", {}),
                         "user timeouts (120 s)": timeouts,
                         "polls": stats["polls"], "api RSS MiB": api})
            print(rows[-1], flush=True)
    finally:
        if agents is not None:
            agents.terminate()
            agents.wait(60)
        stack.down()
    base = rows[0]["p50 ms"]
    for row in rows:
        row["p50 / idle"] = round(row["p50 ms"] / base, 2)
    return rows


def _api_rss(stack) -> int:
    total = 0
    for proc in psutil.Process(stack.service.pid).children(recursive=True):
        try:
            if "gunicorn" in " ".join(proc.cmdline()):
                total += proc.memory_info().rss
        except psutil.Error:
            continue
    return round(total / 2**20)


# --- concurrent Dask clients ---------------------------------------------------------------

def part_dask(clients: int, seconds: float = 20.0) -> list[dict]:
    from fedcompute.testing import LocalStack

    _raise_fd_limit()
    home = Path(tempfile.mkdtemp(prefix="fedscale-dask-"))
    # One user opens every client here: lift the per-user cap (3 comms per client).
    env = {"FEDCOMPUTE_DASK_MAX_COMMS_PER_USER": str(4 * clients),
           "FEDCOMPUTE_DASK_MAX_COMMS": str(4 * clients)}
    stack = LocalStack(home, workers=2, env=env).up()
    try:
        from distributed import Client
        from fedcompute.plugins.dask import FederatedCluster

        async def one(n: int, latencies: list, refusals: list, go: asyncio.Event) -> None:
            try:
                cluster = await FederatedCluster(stack.endpoint_id, service_url=stack.service_url,
                                                 token=stack.token, asynchronous=True)
                client = await Client(cluster, asynchronous=True)
            except Exception as exc:  # noqa: BLE001 - a refusal, counted
                refusals.append(repr(exc)[:200])
                return
            try:
                await go.wait()
                end = time.monotonic() + seconds
                i = 0
                while time.monotonic() < end:
                    t0 = time.perf_counter()
                    assert await client.submit(inc, i, pure=False) == i + 1
                    latencies.append(time.perf_counter() - t0)
                    i += 1
            except Exception as exc:  # noqa: BLE001
                refusals.append(repr(exc)[:200])
            finally:
                await client.close()
                await cluster.close()

        async def main() -> tuple[list, list, float]:
            latencies: list[float] = []
            refusals: list[str] = []
            go = asyncio.Event()
            tasks = []
            for n in range(clients):
                tasks.append(asyncio.create_task(one(n, latencies, refusals, go)))
                await asyncio.sleep(0.05)
            await asyncio.sleep(5)
            started = time.monotonic()
            go.set()
            await asyncio.gather(*tasks)
            return latencies, refusals, time.monotonic() - started

        latencies, refusals, took = asyncio.run(main())
    finally:
        stack.down()
    p50, p99 = _percentiles(latencies) if latencies else (float("nan"),) * 2
    return [{"dask clients": clients, "refused": len(refusals), "round trips": len(latencies),
             "round trips/s": round(len(latencies) / took), "p50 ms": round(p50, 1),
             "p99 ms": round(p99, 1), "first refusal": refusals[0] if refusals else ""}]


# --- 1 vs 3 API processes ------------------------------------------------------------------

def _roles(stack) -> dict[str, list[psutil.Process]]:
    roles: dict[str, list[psutil.Process]] = {"api": [], "valkey": [], "rq": [], "agent": [],
                                              "dask workers": []}
    for proc in psutil.Process(stack.service.pid).children(recursive=True):
        cmd = " ".join(proc.cmdline())
        if "gunicorn" in cmd and "worker" in cmd:
            roles["api"].append(proc)
        elif "valkey" in cmd:
            roles["valkey"].append(proc)
        elif cmd.startswith("rq:"):
            roles["rq"].append(proc)
    for proc in stack.endpoints.values():
        agent = psutil.Process(proc.pid)
        roles["agent"].append(agent)
        roles["dask workers"] += agent.children(recursive=True)
    return roles


def _cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system + getattr(t, "children_user", 0)
        except psutil.Error:
            continue
    return total


def part_processes(tasks: int) -> list[dict]:
    from fedcompute import Executor
    from fedcompute.testing import LocalStack

    rows = []
    for api_workers in (1, 3):
        home = Path(tempfile.mkdtemp(prefix=f"fedscale-api{api_workers}-"))
        stack = LocalStack(home, workers=2, api_workers=api_workers).up()
        try:
            ex = Executor(stack.endpoint_id, client=stack.client())
            assert ex.submit(noop, 0).result(timeout=120) == 0
            rates = []
            cpu: dict[str, float] = {}
            for _ in range(2):
                roles = _roles(stack)
                before = {r: _cpu(p) for r, p in roles.items()}
                sdk_before = sum(psutil.Process().cpu_times()[:2])
                t0 = time.perf_counter()
                futures = [ex.submit(noop, i) for i in range(tasks)]
                for f in futures:
                    f.result(timeout=600)
                rates.append(tasks / (time.perf_counter() - t0))
                cpu = {r: (_cpu(p) - before[r]) / tasks * 1e6 for r, p in roles.items()}
                cpu["sdk"] = (sum(psutil.Process().cpu_times()[:2]) - sdk_before) / tasks * 1e6
            ex.shutdown()
            row = {"API processes": api_workers, "tasks/s": round(statistics.median(rates))}
            row.update({f"{r} µs/task": round(v) for r, v in cpu.items()})
            row["total µs/task"] = round(sum(cpu.values()))
            rows.append(row)
            print(row, flush=True)
        finally:
            stack.down()
    return rows


def table(rows: list[dict]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--idle", default="0,1000,3000,10000")
    parser.add_argument("--dask-clients", type=int, default=200)
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--parts", default="idle,dask,processes")
    parser.add_argument("--idle-api-workers", type=int, default=2,
                        help="API processes of the service in the idle part (one per core)")
    parser.add_argument("--idle-agents", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.idle_agents:
        idle_agents_main(args.idle_agents)
        return
    os.environ.setdefault("FEDCOMPUTE_HOME", tempfile.mkdtemp(prefix="fedscale-home-"))
    parts = args.parts.split(",")
    results = {}
    if "idle" in parts:
        results["idle"] = part_idle([int(x) for x in args.idle.split(",")],
                                    args.idle_api_workers)
    if "dask" in parts:
        results["dask"] = part_dask(args.dask_clients)
    if "processes" in parts:
        results["processes"] = part_processes(args.tasks)
    for name, rows in results.items():
        print(f"\n## {name}\n\n{table(rows)}")


if __name__ == "__main__":
    main()
