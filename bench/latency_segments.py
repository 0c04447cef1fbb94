"""Where a single task's submit->result time goes, from the service's own timestamps.

    .venv/bin/python bench/latency_segments.py [--calls 300]

Starts the embedded stack with one endpoint, runs sequential submit->result calls and prints
the median of each segment: SDK -> service (submission accepted), queued -> leased by the
agent, leased -> result stored (the endpoint's part), stored -> the SDK has it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def noop(x):
    return x


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    from fedcompute import Executor
    from fedcompute.testing import LocalStack

    stack = LocalStack(Path(tempfile.mkdtemp(prefix="fedlat-")), workers=args.workers).up()
    try:
        client = stack.client()
        ex = Executor(stack.endpoint_id, client=client)
        for _ in range(30):
            ex.submit(noop, 0).result()
        rows = []
        for _ in range(args.calls):
            t0 = time.time()
            f = ex.submit(noop, 1)
            f.result()
            t1 = time.time()
            rows.append((t0, t1, f.task_id))
        records = client.get_task_records([r[2] for r in rows])
        seg: dict[str, list[float]] = {k: [] for k in (
            "sdk->accepted", "accepted->leased", "leased->stored", "stored->sdk", "total")}
        for t0, t1, tid in rows:
            ts = records[tid]["timestamps"]
            leased = ts.get("leased", ts.get("running"))
            seg["sdk->accepted"].append(ts["received"] - t0)
            seg["accepted->leased"].append(leased - ts["received"])
            seg["leased->stored"].append(ts["completed"] - leased)
            seg["stored->sdk"].append(t1 - ts["completed"])
            seg["total"].append(t1 - t0)
        print(f"{'segment':<18} {'p50 ms':>8} {'p90 ms':>8}")
        for name, values in seg.items():
            values.sort()
            print(f"{name:<18} {statistics.median(values) * 1e3:8.2f} "
                  f"{values[int(len(values) * 0.9)] * 1e3:8.2f}")
        ex.shutdown()
    finally:
        stack.down()


if __name__ == "__main__":
    main()
