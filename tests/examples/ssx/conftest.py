"""Simulated runs shared by the SSX tests (real HDF5 files, made once per session)."""

from __future__ import annotations

import pytest
from fedcompute_ssx.simulate import simulate_run


@pytest.fixture(scope="session")
def run512(tmp_path_factory):
    """40 frames of 512×512 in three data files (16 + 16 + 8), about half of them hits."""
    return simulate_run(tmp_path_factory.mktemp("run512"), n_frames=40, shape=512,
                        hit_fraction=0.5, frames_per_file=16, seed=2026)


@pytest.fixture(scope="session")
def run1024(tmp_path_factory):
    """24 frames of a full 1024×1024 detector."""
    return simulate_run(tmp_path_factory.mktemp("run1024"), n_frames=24, shape=1024,
                        hit_fraction=0.5, frames_per_file=24, seed=7)
