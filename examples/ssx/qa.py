"""QA of a run: merge the chunk results, then write numbers (JSON, CSV) and PNG plots.

Plots use matplotlib's object API with the Agg canvas, so no display, no pyplot global state:
safe in worker processes and threads.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

FRAME_FIELDS = ("index", "is_hit", "n_spots", "total_counts", "mean_counts", "max_counts",
                "n_saturated", "background", "spot_intensity", "mean_snr", "d_min")


def aggregate(chunks: list[dict]) -> dict:
    """Merge ``analyse_chunk`` results into run-level numbers and arrays."""
    if not chunks:
        raise ValueError("no chunk results to aggregate")
    frames = sorted((f for c in chunks for f in c["frames"]), key=lambda f: f["index"])
    if not frames:
        raise ValueError("the chunk results hold no frames")
    indices = [f["index"] for f in frames]
    if len(set(indices)) != len(indices):
        raise ValueError("some frames were analysed twice (overlapping chunks)")
    n_spots = np.array([f["n_spots"] for f in frames], int)
    hits = np.array([f["is_hit"] for f in frames], bool)
    width = max(1, int(np.ceil(max(n_spots.max(initial=0), 1) / 40)))
    counts, edges = np.histogram(n_spots, bins=np.arange(0, n_spots.max(initial=0) + 2 * width,
                                                         width))
    n_profiles = sum(c["n_profiles"] for c in chunks)
    seconds = sum(c["seconds"] for c in chunks)
    return {
        "frames": frames,
        "n_frames": len(frames),
        "n_hits": int(hits.sum()),
        "hit_rate": float(hits.mean()) if len(frames) else 0.0,
        "missing_frames": sorted(set(range(min(indices), max(indices) + 1)) - set(indices)),
        "spots_per_hit": float(n_spots[hits].mean()) if hits.any() else 0.0,
        "spot_histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
        "max_projection": np.maximum.reduce([c["max_projection"] for c in chunks]),
        "profile_q": chunks[0]["profile_q"],
        "profile": sum(c["profile_sum"] for c in chunks) / max(n_profiles, 1),
        "powder_edges": chunks[0]["powder_edges"],
        "powder": sum(c["powder"] for c in chunks),
        "compute_seconds": seconds,
        "frames_per_second_per_task": len(frames) / seconds if seconds else None,
    }


def write_qa(agg: dict, out_dir: str | os.PathLike, *, title: str = "SSX run") -> dict:
    """Write ``qa_summary.json``, ``frames.csv``, ``profiles.csv``, ``max_projection.npy`` and
    four PNG plots into ``out_dir``; returns the summary (JSON-able, no arrays)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "frames.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, FRAME_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(agg["frames"])
    centres = (agg["powder_edges"][:-1] + agg["powder_edges"][1:]) / 2
    powder = np.interp(agg["profile_q"], centres, agg["powder"])
    np.savetxt(out / "profiles.csv", np.column_stack([agg["profile_q"], agg["profile"], powder]),
               delimiter=",", header="q_inv_angstrom,mean_background,virtual_powder",
               comments="")
    np.save(out / "max_projection.npy", agg["max_projection"])
    plots = {
        "hits": _plot_hits(agg, out / "hits.png", title),
        "spot_histogram": _plot_histogram(agg, out / "spot_histogram.png", title),
        "radial_profile": _plot_profile(agg, out / "radial_profile.png", title),
        "max_projection": _plot_projection(agg, out / "max_projection.png", title),
    }
    summary = {k: agg[k] for k in ("n_frames", "n_hits", "hit_rate", "spots_per_hit",
                                   "spot_histogram", "missing_frames", "compute_seconds",
                                   "frames_per_second_per_task")}
    summary["title"] = title
    summary["plots"] = {k: Path(v).name for k, v in plots.items()}
    backgrounds = [f["background"] for f in agg["frames"]]
    d_mins = [f["d_min"] for f in agg["frames"] if f["is_hit"] and f["d_min"]]
    summary["median_background"] = float(np.median(backgrounds)) if backgrounds else 0.0
    summary["median_hit_resolution"] = float(np.median(d_mins)) if d_mins else None
    (out / "qa_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _save(fig: Figure, path: Path) -> str:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100)
    return str(path)


def _plot_hits(agg: dict, path: Path, title: str) -> str:
    idx = np.array([f["index"] for f in agg["frames"]])
    n = np.array([f["n_spots"] for f in agg["frames"]])
    hit = np.array([f["is_hit"] for f in agg["frames"]], bool)
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(idx[~hit], n[~hit], s=4, c="0.6", label="no hit")
    ax.scatter(idx[hit], n[hit], s=6, c="tab:red", label="hit")
    ax.set(xlabel="frame", ylabel="spots", title=f"{title}: hit rate {agg['hit_rate']:.1%}")
    window = max(1, min(100, len(hit) // 10))
    running = np.convolve(hit, np.ones(window) / window, mode="same")
    ax2 = ax.twinx()
    ax2.plot(idx, running, c="tab:blue", lw=1)
    ax2.set(ylabel=f"hit rate ({window}-frame window)", ylim=(0, 1))
    ax.legend(loc="upper left")
    return _save(fig, path)


def _plot_histogram(agg: dict, path: Path, title: str) -> str:
    h = agg["spot_histogram"]
    edges = np.array(h["edges"])
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.stairs(h["counts"], edges, fill=True)
    ax.set(xlabel="spots per frame", ylabel="frames", yscale="log",
           title=f"{title}: {agg['n_hits']} hits / {agg['n_frames']} frames")
    return _save(fig, path)


def _plot_profile(agg: dict, path: Path, title: str) -> str:
    fig = Figure(figsize=(7, 6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    q = agg["profile_q"]
    top.plot(q, np.where(agg["profile"] > 0, agg["profile"], np.nan))  # 0: no pixels there
    top.set(ylabel="mean background (corrected counts)", title=f"{title}: radial profile")
    centres = (agg["powder_edges"][:-1] + agg["powder_edges"][1:]) / 2
    bottom.plot(centres, agg["powder"], c="tab:red", lw=0.8)
    bottom.set(xlabel="q (Å⁻¹)", ylabel="spot intensity", title="virtual powder pattern")
    d_axis = top.secondary_xaxis("top", functions=(_q_to_d, _q_to_d))
    d_axis.set_xticks([d for d in (20, 10, 6, 4, 3, 2.5, 2) if 2 * np.pi / d <= q.max()])
    d_axis.set_xlabel("d (Å)")
    return _save(fig, path)


def _q_to_d(q):
    q = np.asarray(q, float)
    return 2 * np.pi / np.where(np.abs(q) < 1e-6, 1e-6, q)


def _plot_projection(agg: dict, path: Path, title: str) -> str:
    image = agg["max_projection"].astype(float)
    fig = Figure(figsize=(6, 6), layout="constrained")
    ax = fig.add_subplot()
    shown = ax.imshow(np.maximum(image, 1), norm=LogNorm(vmin=1, vmax=max(image.max(), 2)),
                      cmap="magma", origin="upper", interpolation="nearest")
    fig.colorbar(shown, ax=ax, shrink=0.8, label="max counts")
    ax.set(title=f"{title}: maximum projection", xticks=[], yticks=[])
    return _save(fig, path)
