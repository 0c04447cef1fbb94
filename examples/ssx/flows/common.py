"""What the Prefect, Airflow, Dask and Executor pipelines share: the remote step functions and
the layout of a run's working folder.

Every function here is module-level and imports no workflow engine, so it pickles by reference
and runs on an endpoint that has ``fedcompute_ssx`` installed (Prefect, Airflow and distributed
are not needed there). They wrap :mod:`fedcompute_ssx.steps` and return small, JSON-able values
(an Airflow XCom or a Prefect task result), except :func:`analyse` without ``out_dir``, which
returns the full chunk result for engines that keep it in memory (Dask).

A run's working folder (``work_dir``, on the endpoint's file system)::

    raw/        staged copy of the run (transfer_raw)
    chunks/     chunk_<start>_<stop>.npz, one per analysis task (when results go to files)
    results/    QA output (qa)
    outbox/     verified copy of results/ (transfer_results); moved into the repository by
                publish
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path

from .. import steps

# pyFAI's silx warns on import that pyopencl is missing; the analysis runs on the CPU, and the
# warning would show up in every engine's task log.
logging.getLogger("silx.opencl.common").setLevel(logging.ERROR)

#: Defaults shared by every pipeline.
FRAMES_PER_CHUNK = 20
THRESHOLD = 0.05


def layout(work_dir: str) -> dict[str, str]:
    """Paths of a run's working folder (see the module docstring)."""
    work = Path(work_dir)
    return {name: str(work / name) for name in ("raw", "chunks", "results", "outbox")}


def stage(master: str, work_dir: str) -> dict:
    """transfer_raw: copy the run into ``work_dir/raw`` (SHA-256 verified, resumable).

    Returns the staged ``master``, the staged ``truth`` sidecar (or ``None``), ``files``,
    ``bytes`` and ``seconds``.
    """
    raw = steps.transfer_raw(master, layout(work_dir)["raw"])
    truth = next((str(Path(raw["staging"]) / f["name"]) for f in raw["files"]
                  if f["name"].endswith("_truth.json")), None)
    return {"master": raw["master"], "truth": truth, "files": len(raw["files"]),
            "bytes": raw["bytes"], "seconds": raw["seconds"]}


def plan(master: str, frames_per_chunk: int = FRAMES_PER_CHUNK, params: dict | None = None,
         out_dir: str | None = None) -> list[dict]:
    """plan_chunks: the keyword arguments of one :func:`analyse` call per chunk of frames."""
    return [{**c, "params": params, "out_dir": out_dir}
            for c in steps.plan_chunks(master, frames_per_chunk)]


def analyse(master: str, start: int, stop: int, params: dict | None = None,
            out_dir: str | None = None) -> dict:
    """analyse_chunk, stamped with when it ``started`` and ``finished`` (Unix time, on the
    worker) and where (``host``, ``pid``), so that the pipeline can report the analysis
    throughput of the whole fan-out and which processes did it.

    With ``out_dir`` the result is saved there and a small reference is returned.
    """
    started = time.time()
    result = steps.analyse_chunk(master, start, stop, params, out_dir=out_dir)
    return {**result, "started": started, "finished": time.time(), "host": socket.gethostname(),
            "pid": os.getpid()}


def warm(master: str) -> int:
    """Analyse one frame and forget it: loads the code and pyFAI's integrator into this worker
    process (benchmarks and the demo call it first). Returns the process id."""
    steps.analyse_chunk(master, 0, 1)
    return os.getpid()


def check(chunks: list[dict], threshold: float = THRESHOLD) -> dict:
    """check_threshold, plus the span of the analysis (``analysis``: first start, last end,
    wall ``seconds``, summed ``compute_seconds``, ``frames_per_second`` and the ``workers``
    (host, pid) that ran the chunks)."""
    result = steps.check_threshold(chunks, threshold)
    started = min(c["started"] for c in chunks)
    finished = max(c["finished"] for c in chunks)
    span = finished - started
    result["analysis"] = {
        "chunks": len(chunks), "started": started, "finished": finished, "seconds": span,
        "compute_seconds": sum(c["seconds"] for c in chunks),
        "frames_per_second": result["n_frames"] / span if span > 0 else None,
        "workers": sorted({(c["host"], c["pid"]) for c in chunks}),
    }
    return result


def run_qa(chunks: list[dict], work_dir: str, title: str | None = None,
           truth: str | None = None) -> dict:
    """qa: aggregate the chunks and write numbers and plots into ``work_dir/results``
    (with the truth sidecar, the summary has an ``evaluation``). Returns the summary."""
    out = layout(work_dir)["results"]
    summary = steps.qa(chunks, out, title=title or "SSX run", truth=truth)
    return {**summary, "results_dir": out}


def move_results(work_dir: str) -> dict:
    """transfer_results: copy ``work_dir/results`` into ``work_dir/outbox``, verified."""
    paths = layout(work_dir)
    moved = steps.transfer_results(paths["results"], paths["outbox"])
    return {"destination": moved["destination"], "files": len(moved["files"]),
            "bytes": moved["bytes"], "seconds": moved["seconds"]}


def publish(work_dir: str, master: str, *, repository: str, catalogue: str, owner: str,
            allowed_users: list[str] | None = None, qa_summary: dict | None = None,
            params: dict | None = None, title: str | None = None,
            keywords: list[str] | None = None) -> dict:
    """publish: metadata, move ``work_dir/outbox`` into the repository with a manifest, and
    an access-controlled catalogue entry. Returns ``dataset_id``, ``path``, ``files``, ...
    (not the metadata record, which stays in the repository and the catalogue)."""
    published = steps.publish(layout(work_dir)["outbox"], master, repository=repository,
                              catalogue=catalogue, owner=owner,
                              allowed_users=list(allowed_users or ()), qa_summary=qa_summary,
                              params=params, title=title,
                              keywords=["fedcompute", *(keywords or [])])
    published.pop("record")
    return {**published, "catalogue": catalogue, "owner": owner,
            "allowed_users": list(allowed_users or ())}


def result(engine: str, *, raw: dict, n_chunks: int, check: dict, qa: dict | None,
           transfer: dict | None, published: dict | None, seconds: float) -> dict:
    """The record every pipeline returns (the same shape whatever the engine)."""
    return {"engine": engine, "raw": raw, "chunks": n_chunks, "check": check, "qa": qa,
            "transfer": transfer, "published": published, "seconds": seconds}
