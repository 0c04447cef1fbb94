"""The beamline simulator: Eiger/NXmx file layout, ground truth, determinism."""

from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import h5py
import numpy as np
import pytest
from fedcompute_ssx.geometry import Geometry
from fedcompute_ssx.nexus import MASK_GAP, iter_frames, open_run
from fedcompute_ssx.simulate import HIT_MIN_SPOTS, detector_mask, simulate_frame, simulate_run


def test_master_file_is_nxmx_with_eiger_layout(run512):
    with h5py.File(run512["master"], "r") as f:
        assert f["/entry"].attrs["NX_class"] == "NXentry"
        assert f["/entry/definition"][()] == b"NXmx"
        det = f["/entry/instrument/detector"]
        assert det.attrs["NX_class"] == "NXdetector"
        assert det["detector_distance"].attrs["units"] == "m"
        assert det["beam_center_x"].attrs["units"] == "pixel"
        assert det["x_pixel_size"][()] == 75e-6
        assert f["/entry/instrument/beam/incident_wavelength"][()] == 1.0
        assert det["detectorSpecific/nimages"][()] == 40
        assert det["detectorSpecific/pixel_mask"].shape == (512, 512)
        links = sorted(f["/entry/data"])
        assert links == ["data_000001", "data_000002", "data_000003"]
        link = f["/entry/data"].get("data_000002", getlink=True)
        assert isinstance(link, h5py.ExternalLink)
        assert link.filename == "ssx_data_000002.h5" and link.path == "/entry/data/data"
        data = f["/entry/data/data_000002"]  # resolves through the external link
        assert data.shape == (16, 512, 512) and data.dtype == np.uint16
        assert data.chunks == (1, 512, 512)
        assert data.attrs["image_nr_low"] == 17 and data.attrs["image_nr_high"] == 32
        assert data.id.get_create_plist().get_filter(0)[0] == 32008  # bitshuffle (with LZ4), the Eiger's own compression


def test_open_run_reads_geometry_back(run512):
    run = open_run(run512["master"])
    assert run.geometry == Geometry.default(512)
    assert run.n_frames == 40 and [n for _, n in run.data_files] == [16, 16, 8]
    assert run.cutoff == 65534
    assert run.metadata["detector"].startswith("Dectris EIGER2")


def test_masked_pixels_read_as_maximum_and_frames_follow_the_truth(run512):
    run = open_run(run512["master"])
    truth = json.loads(open(run512["truth"]).read())
    assert truth["n_frames"] == 40 and len(truth["frames"]) == 40
    bad = run.pixel_mask != 0
    assert (run.pixel_mask & MASK_GAP).any()
    for index, frame in iter_frames(run):
        t = truth["frames"][index]
        assert t["index"] == index
        assert (frame[bad] == 65535).all()
        assert frame[~bad].max() < 65535
        # Background-only frames are dim; every true spot is bright where the truth puts it.
        if t["is_hit"]:
            assert t["crystal"] and t["n_spots"] >= HIT_MIN_SPOTS
            x, y, photons = np.array(t["spots"]).T
            peak = frame[y.astype(int), x.astype(int)].astype(float)
            assert np.median(peak) > 5 * np.median(frame[~bad])
        if not t["crystal"]:
            assert t["n_spots"] == 0 and t["spots"] == []
    hits = sum(t["is_hit"] for t in truth["frames"])
    assert 10 <= hits <= 30 and truth["n_hits"] == hits


def test_same_seed_same_run_whatever_the_split(tmp_path):
    a = simulate_run(tmp_path / "a", n_frames=6, shape=256, hit_fraction=0.5, seed=3,
                     frames_per_file=6)
    # Files in parallel in fresh processes (the function pickles by name); same frames still.
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        b = simulate_run(tmp_path / "b", n_frames=6, shape=256, hit_fraction=0.5, seed=3,
                         frames_per_file=4, executor=pool)
    c = simulate_run(tmp_path / "c", n_frames=6, shape=256, hit_fraction=0.5, seed=4,
                     frames_per_file=6)
    frames = {k: np.stack([f for _, f in iter_frames(open_run(r["master"]))])
              for k, r in (("a", a), ("b", b), ("c", c))}
    assert np.array_equal(frames["a"], frames["b"])
    assert not np.array_equal(frames["a"], frames["c"])
    truth_a, truth_b = (json.loads(open(r["truth"]).read())["frames"] for r in (a, b))
    assert truth_a == truth_b


def test_frame_has_poisson_noise_and_solvent_ring():
    geometry = Geometry.default(512)
    frames = [simulate_frame(i, geometry, seed=5, hit_fraction=0.0)[0] for i in range(8)]
    stack = np.stack(frames).astype(float)
    live = detector_mask(geometry) == 0
    q = geometry.q()
    ring = live & (np.abs(q - 2.0) < 0.05)
    inner = live & (np.abs(q - 1.0) < 0.05)
    assert stack[:, ring].mean() > 2 * stack[:, inner].mean()  # the water ring stands out
    # Pixels of one ring share an expected value: their spread is Poisson-like (var ≈ mean).
    values = stack[0][ring]
    assert 0.8 < values.var() / values.mean() < 1.6
    assert not np.array_equal(frames[0], frames[1])


def test_bad_run_parameters_are_refused(tmp_path):
    for kwargs in ({"n_frames": 0}, {"frames_per_file": 0}, {"hit_fraction": 1.5}):
        with pytest.raises(ValueError):
            simulate_run(tmp_path, shape=64, **kwargs)
    assert not list(tmp_path.iterdir())  # nothing half-written
