"""The data-capture steps, shared by every pipeline (Prefect, Airflow, Dask, plain executors).

Each step is a module-level function of simple values (paths, dicts, numbers, small numpy
arrays) returning simple values, so it pickles by reference and can run on a remote endpoint
that has ``fedcompute_ssx`` installed. A run flows::

    transfer_raw -> plan_chunks -> analyse_chunk (× chunks, in parallel) -> check_threshold
      -> qa -> transfer_results -> publish
"""

from __future__ import annotations

import json
import os
import platform
import socket
import time
import uuid
from pathlib import Path

import h5py
import numpy as np

from .background import radial_background
from .catalogue import Catalogue
from .detect import SPOT_COLUMNS, SpotFinderParams, analyse_frame
from .evaluate import evaluate
from .metadata import gather_metadata
from .nexus import iter_frames, open_run
from .qa import aggregate, write_qa
from .repository import copy_verified, deposit

POWDER_BINS = 400


def run_files(master: str | os.PathLike) -> list[Path]:
    """The files of a run: its master, the data files it links and the truth sidecar if any."""
    master = Path(master)
    with h5py.File(master, "r") as f:
        data = f["/entry/data"]
        names = [data.get(k, getlink=True).filename for k in sorted(data) if k.startswith("data_")]
    files = [master, *(master.parent / n for n in names)]
    truth = master.with_name(master.name.replace("_master.h5", "_truth.json"))
    return files + ([truth] if truth.exists() else [])


def transfer_raw(master: str, staging: str) -> dict:
    """Copy a run (master, data files, truth sidecar) into ``staging``, verified by SHA-256.

    Returns ``{"master": staged master path, "staging", "files": [{name, bytes, sha256,
    copied}], "bytes", "seconds"}``. Files already staged with the right checksum are skipped.
    """
    t0 = time.perf_counter()
    files = [copy_verified(p, Path(staging) / p.name) for p in run_files(master)]
    return {"master": str(Path(staging) / Path(master).name), "staging": str(staging),
            "files": files, "bytes": sum(f["bytes"] for f in files),
            "seconds": time.perf_counter() - t0}


def plan_chunks(master: str, frames_per_chunk: int = 100) -> list[dict]:
    """Split a run into ``{"master", "start", "stop"}`` frame ranges, one per analysis task."""
    if frames_per_chunk < 1:
        raise ValueError("frames_per_chunk must be >= 1")
    n = open_run(master).n_frames
    return [{"master": str(master), "start": s, "stop": min(s + frames_per_chunk, n)}
            for s in range(0, n, frames_per_chunk)]


def analyse_chunk(master: str, start: int, stop: int, params: dict | None = None,
                  keep_spots: bool = False, projection_bin: int = 2,
                  out_dir: str | None = None) -> dict:
    """Find spots and classify frames ``start <= i < stop`` of a run.

    Returns per-frame statistics (``frames``), and for QA the chunk's maximum projection
    (max-pooled by ``projection_bin`` to keep the result small, ~0.5 MB for 1024×1024), the
    summed radial background profile (``profile_sum`` over ``n_profiles`` frames, at
    ``profile_q``) and the virtual powder pattern (spot intensity per q bin). With
    ``keep_spots`` also ``spots``: frame index -> list of
    :data:`~fedcompute_ssx.detect.SPOT_COLUMNS` rows.

    With ``out_dir`` the result is saved there (:func:`save_chunk`) and only a small JSON-able
    reference is returned (``path``, ``start``, ``stop``, ``n_frames``, ``n_hits``, ...), for
    engines that keep task results in a database (Airflow's XCom); the later steps accept it.
    """
    t0 = time.perf_counter()
    p = SpotFinderParams.from_dict(params)
    run = open_run(master)
    bad = run.pixel_mask != 0
    good = ~bad
    bg = radial_background(run.geometry, bad, **p.background_options())
    projection = np.zeros(run.geometry.shape, np.uint16 if run.cutoff < 2**16 else np.uint32)
    profile_sum = np.zeros(bg.npt)
    edges = np.linspace(0.0, float(run.geometry.q().max()), POWDER_BINS + 1)
    powder = np.zeros(POWDER_BINS)
    frames, spots_by_frame = [], {}
    for index, frame in iter_frames(run, start, stop):
        stats, spots, profile = analyse_frame(index, frame, bg, p, run.cutoff)
        frames.append(stats)
        np.maximum(projection, frame, out=projection, where=good)
        profile_sum += profile.mean
        if len(spots):
            powder += np.histogram(spots[:, 5], edges, weights=spots[:, 2])[0]
        if keep_spots:
            spots_by_frame[index] = np.round(spots, 3).tolist()
    result = {
        "master": str(master), "start": start, "stop": stop, "frames": frames,
        "max_projection": _max_pool(projection, projection_bin),
        "profile_q": bg.q, "profile_sum": profile_sum, "n_profiles": len(frames),
        "powder_edges": edges, "powder": powder, "params": p.to_dict(),
        "host": socket.gethostname(), "pid": os.getpid(),
        "seconds": time.perf_counter() - t0,
    }
    if keep_spots:
        result["spots"] = spots_by_frame
        result["spot_columns"] = list(SPOT_COLUMNS)
    if out_dir is None:
        return result
    path = save_chunk(result, str(Path(out_dir) / f"chunk_{start:07d}_{stop:07d}.npz"))
    return {"path": path, **{k: result[k] for k in ("master", "start", "stop", "host",
                                                    "seconds")},
            **hit_counts([result])}


_ARRAYS = ("max_projection", "profile_q", "profile_sum", "powder_edges", "powder")


def save_chunk(result: dict, path: str) -> str:
    """Save an :func:`analyse_chunk` result as ``.npz`` (arrays + the rest as JSON)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    rest = {k: v for k, v in result.items() if k not in _ARRAYS}
    tmp = f"{path}.part.npz"
    np.savez(tmp, meta=np.array(json.dumps(rest)), **{k: result[k] for k in _ARRAYS})
    os.replace(tmp, path)
    return path


def load_chunk(chunk: str | dict) -> dict:
    """A full chunk result from a path, a saved-chunk reference, or a full result (as is)."""
    if isinstance(chunk, dict) and "frames" in chunk:
        return chunk
    path = chunk["path"] if isinstance(chunk, dict) else chunk
    with np.load(path) as data:
        result = json.loads(str(data["meta"]))
        result.update({k: data[k] for k in _ARRAYS})
    if "spots" in result:
        result["spots"] = {int(k): v for k, v in result["spots"].items()}
    return result


def _max_pool(image: np.ndarray, k: int) -> np.ndarray:
    if k <= 1:
        return image
    ny, nx = (image.shape[0] // k) * k, (image.shape[1] // k) * k
    return image[:ny, :nx].reshape(ny // k, k, nx // k, k).max(axis=(1, 3))


def hit_counts(chunks: list[dict]) -> dict:
    """``{"n_frames", "n_hits", "hit_rate"}`` of chunk results or saved-chunk references."""
    n = hits = 0
    for c in chunks:
        if "frames" in c:
            n += len(c["frames"])
            hits += sum(f["is_hit"] for f in c["frames"])
        else:
            n += c["n_frames"]
            hits += c["n_hits"]
    return {"n_frames": n, "n_hits": hits, "hit_rate": hits / n if n else 0.0}


def check_threshold(chunks: list[dict], threshold: float = 0.05) -> dict:
    """Is the run worth keeping? ``passed`` when the hit rate reaches ``threshold``."""
    counts = hit_counts(chunks)
    return {**counts, "threshold": threshold, "passed": counts["hit_rate"] >= threshold}


def qa(chunks: list[dict | str], out_dir: str, *, title: str = "SSX run",
       truth: str | None = None) -> dict:
    """Aggregate the chunks (results, saved-chunk references or paths) and write the QA files
    and plots into ``out_dir``.

    With the simulator's ``truth`` sidecar, the summary gets an ``evaluation`` (precision,
    recall, ...) and ``evaluation.json`` is written too. Returns the summary.
    """
    agg = aggregate([load_chunk(c) for c in chunks])
    summary = write_qa(agg, out_dir, title=title)
    if truth:
        summary["evaluation"] = evaluate(agg["frames"], truth, seconds=agg["compute_seconds"])
        (Path(out_dir) / "evaluation.json").write_text(json.dumps(summary["evaluation"],
                                                                  indent=1))
    return summary


def transfer_results(results_dir: str, destination: str) -> dict:
    """Copy every file of ``results_dir`` into ``destination`` (same layout), SHA-256 verified."""
    t0 = time.perf_counter()
    src = Path(results_dir)
    files = [{**copy_verified(p, Path(destination) / p.relative_to(src)),
              "name": p.relative_to(src).as_posix()}
             for p in sorted(src.rglob("*")) if p.is_file()]
    return {"destination": str(destination), "files": files,
            "bytes": sum(f["bytes"] for f in files), "seconds": time.perf_counter() - t0}


def publish(results_dir: str, master: str, *, repository: str, catalogue: str, owner: str,
            allowed_users: list[str] | tuple[str, ...] = (), qa_summary: dict | None = None,
            params: dict | None = None, title: str | None = None, description: str = "",
            keywords: list[str] | None = None) -> dict:
    """Ingest: gather the metadata, move the results into the repository (with a manifest) and
    add a searchable, access-controlled entry to the catalogue.

    Returns ``{"dataset_id", "path", "manifest", "files", "bytes", "record"}``.
    """
    record = gather_metadata(master, qa_summary, params=params, title=title,
                             description=description, keywords=keywords,
                             extra={"owner": owner, "publisher_host": platform.node()})
    Path(results_dir, "metadata.json").write_text(json.dumps(record, indent=1))
    cat = Catalogue(catalogue)
    dataset_id = _new_id(record)
    stored = deposit(results_dir, repository, dataset_id)
    cat.add(record, owner=owner, allowed_users=allowed_users, dataset_id=dataset_id,
            path=stored["path"])
    return {"dataset_id": dataset_id, **stored, "record": record}


def _new_id(record: dict) -> str:
    stem = "".join(c if c.isalnum() else "-" for c in record["run"]["master"])
    return f"{stem.removesuffix('-master-h5')}-{uuid.uuid4().hex[:12]}"
