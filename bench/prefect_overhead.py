"""Per-task overhead of ``FederatedTaskRunner`` against ``ThreadPoolTaskRunner``, same flows.

Starts a fedcompute stack (service + embedded Valkey + an endpoint on a Dask LocalCluster, all on
this machine, via ``fedcompute.testing.LocalStack``) and a temporary Prefect server
(``prefect_test_harness``), then runs, alternating the runners on each round:

* ``map``: one flow mapping a trivial task over ``--tasks`` items: wall time per task;
* ``chain``: ``--chain`` tasks submitted one after the other, each waiting for the previous
  result: the latency of one task, start to result.

Runners: ``ThreadPoolTaskRunner`` (the task bodies run in threads of the flow's process),
``FederatedTaskRunner`` (the Prefect engine stays in the flow, bodies run on the endpoint as Dask
tasks), the same with ``fast_lane=True`` (bodies on the endpoint's fast lane), and
``FederatedTaskRunner(remote_engine=True)`` (the whole engine runs on the endpoint). Prints the
median over ``--repeat`` rounds, in ms per task, and the ratios to ThreadPoolTaskRunner.

    .venv/bin/python bench/prefect_overhead.py [--repeat 3] [--tasks 500] [--chain 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Prefect reads its settings once, at import.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="prefect-bench-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # no per-task console lines

from fedcompute.plugins.prefect import FederatedTaskRunner  # noqa: E402
from fedcompute.testing import LocalStack  # noqa: E402
from prefect import flow, task  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402
from prefect.testing.utilities import prefect_test_harness  # noqa: E402


@task
def inc(x: int) -> int:
    return x + 1


def map_flow(runner, n: int) -> float:
    @flow(task_runner=runner, name="bench-map")
    def fan_out() -> int:
        return sum(f.result() for f in inc.map(range(n)))

    start = time.perf_counter()
    assert fan_out() == n * (n + 1) // 2
    return (time.perf_counter() - start) / n * 1000


def chain_flow(runner, n: int) -> float:
    elapsed: list[float] = []

    @flow(task_runner=runner, name="bench-chain")
    def chain() -> int:
        value = inc.submit(0).result()  # warm: function registration, connections
        start = time.perf_counter()
        for _ in range(n):
            value = inc.submit(value).result()
        elapsed.append(time.perf_counter() - start)
        return value

    assert chain() == n + 1
    return elapsed[0] / n * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--chain", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    stack = LocalStack(Path(tempfile.mkdtemp(prefix="fedcompute-bench-")), workers=args.workers)
    print("starting the fedcompute stack and a Prefect server ...", file=sys.stderr)
    stack.up()
    try:
        with prefect_test_harness(server_startup_timeout=180):
            client = stack.client()
            runners = {
                "ThreadPoolTaskRunner": ThreadPoolTaskRunner(),
                "FederatedTaskRunner": FederatedTaskRunner(stack.endpoint_id, client=client),
                "Federated, fast_lane": FederatedTaskRunner(stack.endpoint_id, client=client,
                                                            fast_lane=True),
                "Federated, remote_engine": FederatedTaskRunner(
                    stack.endpoint_id, client=client, remote_engine=True),
            }
            # Warm every path once (Prefect imports in the Dask workers, registrations).
            for runner in runners.values():
                map_flow(runner, 20)
            results: dict[tuple[str, str], list[float]] = {}
            for round_ in range(args.repeat):
                for name, runner in runners.items():
                    results.setdefault(("map", name), []).append(map_flow(runner, args.tasks))
                    results.setdefault(("chain", name), []).append(
                        chain_flow(runner, args.chain))
                print(f"round {round_ + 1}/{args.repeat} done", file=sys.stderr)
    finally:
        stack.down()

    med = {key: statistics.median(values) for key, values in results.items()}
    base = "ThreadPoolTaskRunner"
    rows = [
        ("map", f"map of {args.tasks} tasks: wall ms / task"),
        ("chain", f"chain of {args.chain}: latency ms / task"),
    ]
    print()
    header = f"| {'scenario':<36} | " + " | ".join(f"{n:>24}" for n in runners) + \
        " | fed/thread | fast-lane/thread | remote-engine/thread |"
    print(header)
    print("|" + "|".join("-" * (len(c) + 0) for c in header.split("|")[1:-1]) + "|")
    for key, label in rows:
        cells = " | ".join(f"{med[(key, n)]:>24.2f}" for n in runners)
        ratio = med[(key, "FederatedTaskRunner")] / med[(key, base)]
        ratio_fl = med[(key, "Federated, fast_lane")] / med[(key, base)]
        ratio_re = med[(key, "Federated, remote_engine")] / med[(key, base)]
        print(f"| {label:<36} | {cells} | {ratio:>9.1f}x | {ratio_fl:>15.1f}x | "
              f"{ratio_re:>19.1f}x |")
    print(f"\nmedian of {args.repeat} rounds; endpoint: Dask LocalCluster with {args.workers} "
          f"workers on this machine ({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
