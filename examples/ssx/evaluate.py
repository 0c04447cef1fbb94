"""Hit-finding quality against the simulator's ground truth, and a one-screen summary."""

from __future__ import annotations

import json
import os


def load_truth(truth: str | os.PathLike | dict) -> dict:
    """The truth sidecar (a path or the already-loaded dict)."""
    if isinstance(truth, dict):
        return truth
    with open(truth) as f:
        return json.load(f)


def evaluate(frames: list[dict], truth: str | os.PathLike | dict,
             seconds: float | None = None) -> dict:
    """Compare per-frame results (``index``, ``is_hit``, ``n_spots``) with the truth.

    Returns frames, hits found and true, TP/FP/FN, precision, recall and (given the analysis
    time) frames per second. Only analysed frames are compared; an index the truth lacks is an
    error.
    """
    truth_frames = {t["index"]: t for t in load_truth(truth)["frames"]}
    found = {f["index"]: f for f in frames}
    missing = sorted(set(found) - set(truth_frames))
    if missing:
        raise ValueError(f"frames {missing[:5]}... are not in the truth")
    tp = sum(1 for i, f in found.items() if f["is_hit"] and truth_frames[i]["is_hit"])
    fp = sum(1 for i, f in found.items() if f["is_hit"] and not truth_frames[i]["is_hit"])
    fn = sum(1 for i, f in found.items() if not f["is_hit"] and truth_frames[i]["is_hit"])
    hits_true = sum(1 for i in found if truth_frames[i]["is_hit"])
    true_spots = sum(truth_frames[i]["n_spots"] for i in found)
    return {
        "frames": len(found),
        "hits_found": tp + fp,
        "hits_true": hits_true,
        "true_positives": tp,
        "false_positives": fp,
        "false_negatives": fn,
        # No predicted (or no true) hits: precision (recall) is 1 by convention, nothing wrong.
        "precision": tp / (tp + fp) if tp + fp else 1.0,
        "recall": tp / (tp + fn) if tp + fn else 1.0,
        "spots_found": sum(f["n_spots"] for f in found.values()),
        "spots_true_strong": true_spots,
        "seconds": seconds,
        "frames_per_second": len(found) / seconds if seconds else None,
    }


def format_summary(summary: dict) -> str:
    """The evaluation as a few human-readable lines."""
    lines = [
        f"frames            {summary['frames']}",
        f"hits found / true {summary['hits_found']} / {summary['hits_true']} "
        f"(TP {summary['true_positives']}, FP {summary['false_positives']}, "
        f"FN {summary['false_negatives']})",
        f"precision         {summary['precision']:.3f}",
        f"recall            {summary['recall']:.3f}",
    ]
    if summary.get("frames_per_second"):
        lines.append(f"frames/s          {summary['frames_per_second']:.1f} "
                     f"({summary['seconds']:.2f} s)")
    return "\n".join(lines)
