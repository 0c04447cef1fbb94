"""The reference SSX pipeline without a workflow engine: every step is a task on a
``concurrent.futures.Executor`` — a ``fedcompute.Executor`` (:func:`run_executor`: the steps
run on an endpoint) or any local pool (:func:`run_steps`, the baseline of the benchmark). The
analysis fans out as one task per chunk; chunk results are saved in ``work_dir/chunks`` and
only small references come back."""

from __future__ import annotations

import time
from concurrent.futures import Executor as FuturesExecutor
from pathlib import Path

from fedcompute import Client, Executor

from . import common


def run_steps(executor: FuturesExecutor, master: str, work_dir: str, *, engine: str = "local",
              frames_per_chunk: int = common.FRAMES_PER_CHUNK, spot_params: dict | None = None,
              threshold: float = common.THRESHOLD, repository: str | None = None,
              catalogue: str | None = None, owner: str = "beamline",
              allowed_users: list[str] | None = None, title: str | None = None,
              use_truth: bool = True) -> dict:
    """The pipeline's steps on ``executor``; the same record as the engine pipelines (see
    ``common.result``)."""
    t0 = time.perf_counter()
    paths = common.layout(work_dir)
    raw = executor.submit(common.stage, master, work_dir).result()
    chunks = executor.submit(common.plan, raw["master"], frames_per_chunk, spot_params,
                             paths["chunks"]).result()
    refs = [f.result() for f in [executor.submit(common.analyse, **c) for c in chunks]]
    check = executor.submit(common.check, refs, threshold).result()
    summary = moved = published = None
    if check["passed"]:
        summary = executor.submit(common.run_qa, refs, work_dir, title,
                                  raw["truth"] if use_truth else None).result()
        moved = executor.submit(common.move_results, work_dir).result()
        published = executor.submit(
            common.publish, work_dir, raw["master"],
            repository=repository or str(Path(work_dir) / "repository"),
            catalogue=catalogue or str(Path(work_dir) / "catalogue.sqlite"), owner=owner,
            allowed_users=allowed_users, qa_summary=summary, params=spot_params,
            title=title).result()
    return common.result(engine, raw=raw, n_chunks=len(chunks), check=check, qa=summary,
                         transfer=moved, published=published, seconds=time.perf_counter() - t0)


def run_executor(master: str, work_dir: str, *, endpoint_id: str, client: Client | None = None,
                 **options) -> dict:
    """Every step a fedcompute task on ``endpoint_id`` (options as :func:`run_steps`)."""
    with Executor(endpoint_id=endpoint_id, client=client or Client()) as ex:
        return run_steps(ex, master, work_dir, engine="executor", **options)
