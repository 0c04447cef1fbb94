"""The reference data-capture pipeline: the steps in order, chunks on any executor.

``executor`` is any ``concurrent.futures.Executor``: ``None`` runs everything inline, a
``ProcessPoolExecutor`` uses local cores, and a ``fedcompute.Executor(endpoint_id=...)`` runs the
chunk analysis on a remote endpoint. The Prefect, Airflow and Dask pipelines run the same steps.
"""

from __future__ import annotations

import time
from concurrent.futures import Executor
from pathlib import Path

from . import steps


def run_pipeline(master: str, work_dir: str, *, executor: Executor | None = None,
                 frames_per_chunk: int = 100, params: dict | None = None,
                 threshold: float = 0.05, repository: str | None = None,
                 catalogue: str | None = None, owner: str = "beamline",
                 allowed_users: list[str] | tuple[str, ...] = (), title: str | None = None,
                 use_truth: bool = True) -> dict:
    """Transfer, analyse, check, QA, transfer results and (if the check passed and a
    repository and catalogue are given) publish a run. Returns what each step reported."""
    t0 = time.perf_counter()
    work = Path(work_dir)
    raw = steps.transfer_raw(master, str(work / "raw"))
    chunks = steps.plan_chunks(raw["master"], frames_per_chunk)
    if executor is None:
        results = [steps.analyse_chunk(**c, params=params) for c in chunks]
    else:
        futures = [executor.submit(steps.analyse_chunk, **c, params=params) for c in chunks]
        results = [f.result() for f in futures]
    check = steps.check_threshold(results, threshold)
    truth = next((f["name"] for f in raw["files"] if f["name"].endswith("_truth.json")), None)
    scratch = work / "scratch" / "results"
    summary = steps.qa(results, str(scratch), title=title or Path(master).stem,
                       truth=str(work / "raw" / truth) if truth and use_truth else None)
    moved = steps.transfer_results(str(scratch), str(work / "outbox"))
    published = None
    if check["passed"] and repository and catalogue:
        published = steps.publish(str(work / "outbox"), raw["master"], repository=repository,
                                  catalogue=catalogue, owner=owner,
                                  allowed_users=allowed_users, qa_summary=summary,
                                  params=params, title=title)
        published.pop("record")
    return {"raw": {k: raw[k] for k in ("master", "bytes", "seconds")},
            "chunks": len(chunks), "check": check, "qa": summary,
            "transfer": {k: moved[k] for k in ("destination", "bytes", "seconds")},
            "published": published, "seconds": time.perf_counter() - t0}
