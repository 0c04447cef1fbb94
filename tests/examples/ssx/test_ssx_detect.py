"""Background, spot finding and hit classification against the simulator's truth."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fedcompute_ssx.background import radial_background
from fedcompute_ssx.detect import SPOT_COLUMNS, SpotFinderParams, find_spots
from fedcompute_ssx.evaluate import evaluate, format_summary
from fedcompute_ssx.nexus import iter_frames, open_run
from fedcompute_ssx.steps import analyse_chunk
from scipy.spatial import cKDTree


def _truth(run):
    return json.loads(open(run["truth"]).read())


def test_radial_background_finds_the_water_ring(run512):
    run = open_run(run512["master"])
    bg = radial_background(run.geometry, run.pixel_mask != 0, d_max=40.0)
    _, frame = next(iter_frames(run, 0, 1))
    profile = bg.profile(frame)
    assert abs(bg.q[np.argmax(profile.mean)] - 2.0) < 0.1
    # The clipped ring spread is about Poisson (σ ≈ √mean) where the background is ~1 count.
    ok = profile.mean > 0.5
    assert np.median(profile.std[ok] / np.sqrt(profile.mean[ok])) == pytest.approx(1, abs=0.25)
    assert not bg.valid[run.pixel_mask != 0].any()
    # Cached: the pyFAI set-up is paid once per process.
    assert radial_background(run.geometry, run.pixel_mask != 0, d_max=40.0) is bg


def test_found_spots_are_true_spots(run512):
    run = open_run(run512["master"])
    truth = _truth(run512)["frames"]
    params = SpotFinderParams()
    bg = radial_background(run.geometry, run.pixel_mask != 0, **params.background_options())
    matched = found = true_strong = recovered = 0
    for index, frame in iter_frames(run):
        spots, _ = find_spots(frame, bg, params)
        assert spots.shape[1] == len(SPOT_COLUMNS)
        t = truth[index]
        if not t["crystal"]:
            assert len(spots) <= 1  # noise alone makes (almost) no spots
            continue
        if not len(spots) or not t["spots"]:
            continue
        true_xy = np.array(t["spots"])[:, :2]
        distance, _ = cKDTree(true_xy).query(spots[:, :2])
        matched += int((distance < 1.5).sum())
        found += len(spots)
        back, _ = cKDTree(spots[:, :2]).query(true_xy)
        recovered += int((back < 1.5).sum())
        true_strong += len(true_xy)
    assert found > 500
    assert matched / found >= 0.97  # found spots sit on true spots
    assert recovered / true_strong >= 0.6  # and most strong true spots are found


def test_hot_pixels_and_gaps_make_no_spots(run512):
    run = open_run(run512["master"])
    result = analyse_chunk(run512["master"], 0, 40, keep_spots=True, projection_bin=1)
    no_crystal = [t["index"] for t in _truth(run512)["frames"] if not t["crystal"]]
    for index in no_crystal:
        assert result["spots"][index] == [] or len(result["spots"][index]) <= 1
    all_spots = np.array([s for spots in result["spots"].values() for s in spots])
    ix, iy = all_spots[:, 0].astype(int), all_spots[:, 1].astype(int)
    assert (run.pixel_mask[iy, ix] == 0).all()
    # Unflagged hot pixels are bright in every frame, yet single pixels: never a spot.
    hot = np.argwhere(result["max_projection"] > 25)
    quiet = [t["index"] for t in _truth(run512)["frames"] if not t["crystal"]]
    frames = dict(iter_frames(run))
    always_bright = [tuple(p) for p in hot
                     if all(frames[i][p[0], p[1]] > 20 for i in quiet)]
    assert always_bright  # the simulator does put some there
    for y, x in always_bright:
        assert not ((iy == y) & (ix == x)).any()


def test_precision_and_recall_on_512(run512):
    result = analyse_chunk(run512["master"], 0, 40)
    summary = evaluate(result["frames"], run512["truth"], seconds=result["seconds"])
    print(format_summary(summary))
    assert summary["frames"] == 40 and summary["hits_true"] >= 15
    assert summary["precision"] >= 0.95
    assert summary["recall"] >= 0.95


def test_precision_and_recall_on_full_1024_detector(run1024):
    result = analyse_chunk(run1024["master"], 0, 24)
    summary = evaluate(result["frames"], run1024["truth"], seconds=result["seconds"])
    print(format_summary(summary))
    assert summary["hits_true"] >= 8
    assert summary["precision"] >= 0.95 and summary["recall"] >= 0.95
    assert result["max_projection"].shape == (512, 512)  # max-pooled 2×2 by default


def test_params_are_checked():
    with pytest.raises(ValueError, match="unknown spot-finder parameters"):
        SpotFinderParams.from_dict({"n_sigmaa": 3})
    p = SpotFinderParams.from_dict({"min_spots": 5})
    assert p.min_spots == 5 and SpotFinderParams.from_dict(p.to_dict()) == p


def test_evaluate_counts_and_rejects_unknown_frames():
    truth = {"frames": [{"index": i, "is_hit": i < 4, "n_spots": 20 if i < 4 else 0}
                        for i in range(10)]}
    frames = [{"index": i, "is_hit": i in (0, 1, 2, 5), "n_spots": 0} for i in range(10)]
    s = evaluate(frames, truth, seconds=2.0)
    assert (s["true_positives"], s["false_positives"], s["false_negatives"]) == (3, 1, 1)
    assert s["precision"] == 0.75 and s["recall"] == 0.75 and s["frames_per_second"] == 5.0
    assert "precision         0.750" in format_summary(s)
    with pytest.raises(ValueError, match="not in the truth"):
        evaluate([{"index": 99, "is_hit": True, "n_spots": 1}], truth)
