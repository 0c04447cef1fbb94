"""Gather what is known about a run into one JSON record (for the catalogue and the repository)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from datetime import UTC, datetime
from pathlib import Path

from .nexus import open_run

SOFTWARE = ("numpy", "scipy", "h5py", "pyFAI", "matplotlib")


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def gather_metadata(master: str | os.PathLike, qa_summary: dict | None = None, *,
                    params: dict | None = None, title: str | None = None,
                    description: str = "", keywords: list[str] | None = None,
                    extra: dict | None = None) -> dict:
    """A JSON-able record: instrument and geometry from the master file, the analysis
    parameters, the QA numbers, software versions and provenance."""
    run = open_run(master)
    geometry = run.geometry.to_dict()
    sample = run.metadata.get("sample", "")
    qa = dict(qa_summary or {})
    qa.pop("spot_histogram", None)  # arrays belong in the files, not in the search index
    record = {
        "title": title or f"SSX {Path(master).name.removesuffix('_master.h5')} {sample}".strip(),
        "description": description or (
            f"Serial crystallography run of {run.n_frames} frames on {run.metadata['detector']}"
            f" ({sample}); hit rate {qa.get('hit_rate', float('nan')):.1%}."),
        "keywords": sorted({"serial crystallography", "SSX", "NeXus", "NXmx",
                            *(keywords or [])}),
        "technique": "serial synchrotron crystallography",
        "instrument": {**run.metadata, "geometry": geometry},
        "run": {"master": Path(master).name, "n_frames": run.n_frames,
                "data_files": [Path(p).name for p, _ in run.data_files]},
        "analysis": {"software": {"fedcompute_ssx": "0.1.0",
                                  **{name: _version(name) for name in SOFTWARE}},
                     "parameters": params or {}},
        "qa": qa,
        "provenance": {"host": platform.node(),
                       "created": datetime.now(UTC).isoformat(timespec="seconds")},
    }
    record.update(extra or {})
    return record
