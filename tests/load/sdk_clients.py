"""One load-generating process: ``--clients`` SDK clients in threads, each its own ``Client``
(own HTTP connections) and ``Executor`` (own task group), each submitting ``--tasks`` tasks and
collecting their results. Prints one JSON line per client: latencies, HTTP statuses, errors.

Run by ``test_load.py`` as a script (``python tests/load/sdk_clients.py ...``), several at once.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import threading
import time
from collections import Counter
from pathlib import Path


def scaled(i, k):
    return i * k


def run_client(url: str, token: str, endpoint: str, index: int, tasks: int,
               go: threading.Event) -> dict:
    from fedcompute import Client, Executor

    client = Client(url, token)
    statuses: Counter = Counter()
    client._http.event_hooks["response"].append(
        lambda response: statuses.update([response.status_code]))
    latencies: list[float] = []
    lock = threading.Lock()
    go.wait()
    began = time.time()
    wrong = errors = 0
    with Executor(endpoint, client=client) as ex:
        sent: dict = {}
        # Every record the result stream delivers, counted: one per task, never two.
        delivered: Counter = Counter()
        resolve = ex._results.resolve

        def counting(record: dict) -> None:
            with lock:
                delivered[record["task_id"]] += 1
            resolve(record)

        ex._results.resolve = counting

        def done(future, t0):
            with lock:
                latencies.append(time.time() - t0)

        futures = []
        for i in range(tasks):
            t0 = time.time()
            future = ex.submit(scaled, i, index)
            future.add_done_callback(lambda f, t0=t0: done(f, t0))
            sent[future] = i * index
            futures.append(future)
        for future in concurrent.futures.as_completed(futures, timeout=1800):
            try:
                if future.result() != sent[future]:
                    wrong += 1
            except Exception:  # noqa: BLE001 - counted and reported
                errors += 1
        group = str(ex.task_group_id)
    return {"client": index, "group": group, "began": began, "ended": time.time(),
            "latencies": latencies, "statuses": dict(statuses), "wrong": wrong,
            "errors": errors, "delivered_twice": sum(1 for n in delivered.values() if n > 1),
            "delivered": len(delivered)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--tokens", required=True, help="comma-separated, one per client")
    parser.add_argument("--endpoints", required=True, help="comma-separated, one per client")
    parser.add_argument("--first", type=int, required=True, help="index of the first client")
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--ready", required=True, help="file to create once set up")
    parser.add_argument("--go", required=True, help="file whose appearance starts the load")
    args = parser.parse_args()
    tokens, endpoints = args.tokens.split(","), args.endpoints.split(",")
    import fedcompute  # noqa: F401 - imported before the start, not timed

    go = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(len(tokens)) as pool:
        jobs = [pool.submit(run_client, args.url, token, endpoint, args.first + n, args.tasks,
                            go)
                for n, (token, endpoint) in enumerate(zip(tokens, endpoints, strict=True))]
        # Every process starts together, once all have imported fedcompute.
        Path(args.ready).touch()
        deadline = time.monotonic() + 600
        while not Path(args.go).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        go.set()
        for job in concurrent.futures.as_completed(jobs):
            print(json.dumps(job.result()), flush=True)


if __name__ == "__main__":
    main()
