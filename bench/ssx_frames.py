"""Frames per second of the serial-crystallography pipeline (examples/ssx) per engine.

    .venv/bin/python bench/ssx_frames.py [--frames 2000] [--shape 1024] [--frames-per-chunk 50]
        [--engines prefect,airflow,dask,executor,local] [--runs 3] [--airflow-runs 1]
        [--workers 2]

Generates one run (Eiger-style NeXus, ~0.34 MB per 1024x1024 frame), starts the embedded stack
(service + endpoint with ``--workers`` Dask worker processes; or uses the one of
``fedcompute dev --run`` when FEDCOMPUTE_ENDPOINT_ID is set), warms the workers up, then runs
the whole pipeline (stage, analyse per chunk, check, QA, transfer, publish) with each engine:

* ``prefect``  — Prefect flow, FederatedTaskRunner (temporary Prefect server in a temp home)
* ``airflow``  — ``airflow dags test`` with RemoteFunctionOperator (runs tasks one at a time)
* ``dask``     — Client(FederatedCluster) for the compute, fedcompute.Executor for the rest
* ``executor`` — every step a fedcompute.Executor task
* ``local``    — the same steps on a local ProcessPoolExecutor(--workers): no fedcompute
  (one OpenMP thread per process, as Dask's workers have)

and prints medians of ``--runs`` runs (``--airflow-runs`` for Airflow, which is slow), taken
round robin across the engines:
"analysis fr/s" = frames / span from the first chunk's start to the last chunk's end on the
workers; "pipeline s" = the whole pipeline as the caller sees it, engine start-up included.
The machine is shared and noisy: compare the ratio to ``local``, not seconds.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ENGINES = ("prefect", "airflow", "dask", "executor", "local")


def one_thread_per_process() -> None:
    """What Dask's nanny does for every worker (``distributed.nanny.pre-spawn-environ``):
    one OpenMP/BLAS thread per process. pyFAI's CSR integration uses OpenMP, so a local pool
    without it oversubscribes the cores and is not a fair baseline."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = "1"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=2000)
    p.add_argument("--shape", type=int, default=1024)
    p.add_argument("--hit-fraction", type=float, default=0.3)
    p.add_argument("--frames-per-chunk", type=int, default=50)
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--runs", type=int, default=3, help="runs per engine (median)")
    p.add_argument("--airflow-runs", type=int, default=1)
    p.add_argument("--workers", type=int, default=2, help="endpoint / local worker processes")
    p.add_argument("--tmp", default=None, help="folder for the data (default: a temp folder)")
    args = p.parse_args(argv)
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = set(args.engines) - set(ENGINES)
    if unknown:
        p.error(f"unknown engines {sorted(unknown)}; choose from {', '.join(ENGINES)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="ssx-bench-", dir=args.tmp))
    # Before Prefect is imported: its settings are read at import.
    os.environ.update(PREFECT_HOME=str(root / "prefect"), PREFECT_LOGGING_LEVEL="WARNING",
                      PREFECT_SERVER_ANALYTICS_ENABLED="false")
    os.environ.pop("PREFECT_API_URL", None)
    from fedcompute_ssx.demo import run_engine, simulate, warm_up
    from fedcompute_ssx.flows.common import warm
    from fedcompute_ssx.flows.executor_pipeline import run_steps

    stack = pool = None
    try:
        print(f"simulating {args.frames} frames of {args.shape}x{args.shape} ...", flush=True)
        sim = simulate(root / "beamline", frames=args.frames, shape=args.shape,
                       hit_fraction=args.hit_fraction, seed=1, workers=args.workers)
        print(f"  {sim['seconds']:.1f} s", flush=True)

        from fedcompute import Client

        if os.environ.get("FEDCOMPUTE_ENDPOINT_ID"):
            client, endpoint_id = Client(), os.environ["FEDCOMPUTE_ENDPOINT_ID"]
        else:
            from fedcompute.testing import LocalStack

            (root / "fedcompute-home").mkdir()  # LocalStack opens its log before creating it
            stack = LocalStack(root / "fedcompute-home", workers=args.workers).up()
            client, endpoint_id = stack.client(), stack.endpoint_id
        if set(args.engines) - {"local"}:
            warm_up(endpoint_id, client, sim["master"], tasks=2 * args.workers)
        if "local" in args.engines:
            pool = ProcessPoolExecutor(args.workers, initializer=one_thread_per_process,
                                       mp_context=multiprocessing.get_context("spawn"))
            for f in [pool.submit(warm, sim["master"]) for _ in range(2 * args.workers)]:
                f.result()

        rows: dict[str, list[dict]] = {}
        # Round robin (one run of each engine, then again): the machine's load drifts, and
        # this spreads the drift over every engine instead of charging it to one.
        plan = [(i, e) for i in range(max(args.runs, args.airflow_runs)) for e in args.engines
                if i < (args.airflow_runs if e == "airflow" else args.runs)]
        for i, engine in plan:
            runs = args.airflow_runs if engine == "airflow" else args.runs
            work = root / "work" / f"{engine}-{i}"
            options = dict(frames_per_chunk=args.frames_per_chunk,
                           repository=str(root / "repository"),
                           catalogue=str(root / "catalogue.sqlite"), owner="bench",
                           title=f"bench {engine} {i}")
            if engine == "local":
                t0 = time.perf_counter()
                record = run_steps(pool, sim["master"], str(work), **options)
                record["wall_seconds"] = time.perf_counter() - t0
            else:
                record = run_engine(engine, sim["master"], str(work), endpoint_id=endpoint_id,
                                    client=client, airflow_home=str(root / "airflow"),
                                    **options)
            rows.setdefault(engine, []).append(record)
            analysis = record["check"]["analysis"]
            print(f"  {engine} run {i + 1}/{runs}: analysis "
                  f"{analysis['frames_per_second']:.1f} frames/s, pipeline "
                  f"{record['wall_seconds']:.1f} s", flush=True)
            shutil.rmtree(work, ignore_errors=True)  # the staged copy is as big as the run
        print()
        print(table(rows, args))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        if stack is not None:
            stack.down()
        shutil.rmtree(root, ignore_errors=True)


def table(rows: dict[str, list[dict]], args: argparse.Namespace) -> str:
    """The medians per engine, and the analysis rate relative to the local pool."""
    def med(records: list[dict], fn) -> float:
        return statistics.median(fn(r) for r in records)

    analysis = {e: med(rs, lambda r: r["check"]["analysis"]["frames_per_second"])
                for e, rs in rows.items()}
    base = analysis.get("local")
    lines = [f"SSX pipeline, {args.frames} frames {args.shape}x{args.shape}, "
             f"{args.frames_per_chunk} frames per analysis task, {args.workers} workers "
             f"(medians; {os.cpu_count()} cores, shared)",
             "",
             f"{'engine':<9} {'runs':>4} {'analysis fr/s':>13} {'vs local':>8} "
             f"{'pipeline s':>10} {'overall fr/s':>12} {'precision':>9} {'recall':>6}"]
    for engine in [e for e in args.engines if e in rows]:
        records = rows[engine]
        pipeline = med(records, lambda r: r["wall_seconds"])
        overall = med(records, lambda r: r["check"]["n_frames"] / r["wall_seconds"])
        ev = records[-1]["qa"]["evaluation"] if records[-1]["qa"] else None
        ratio = f"{analysis[engine] / base:>8.2f}" if base else f"{'-':>8}"
        quality = f"{ev['precision']:>9.3f} {ev['recall']:>6.3f}" if ev else f"{'-':>9} {'-':>6}"
        lines.append(f"{engine:<9} {len(records):>4} {analysis[engine]:>13.1f} {ratio} "
                     f"{pipeline:>10.1f} {overall:>12.1f} {quality}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
