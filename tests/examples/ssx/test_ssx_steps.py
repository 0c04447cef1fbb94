"""The data-capture steps and the reference pipeline, on real files."""

from __future__ import annotations

import json
import multiprocessing
import pickle
import shutil
import subprocess
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
from click.testing import CliRunner
from fedcompute_ssx import steps
from fedcompute_ssx.catalogue import Catalogue
from fedcompute_ssx.cli import ssx
from fedcompute_ssx.pipeline import run_pipeline
from fedcompute_ssx.repository import (
    MANIFEST,
    copy_verified,
    deposit,
    sha256_file,
    verify_manifest,
)


def test_steps_pickle_by_reference():
    # A remote endpoint with fedcompute_ssx installed imports them by name: tiny payloads.
    for fn in (steps.transfer_raw, steps.plan_chunks, steps.analyse_chunk,
               steps.check_threshold, steps.qa, steps.transfer_results, steps.publish):
        payload = cloudpickle.dumps(fn)
        assert len(payload) < 200 and pickle.loads(payload) is fn


def test_transfer_raw_copies_with_checksums_and_resumes(run512, tmp_path):
    first = steps.transfer_raw(run512["master"], str(tmp_path / "staging"))
    names = sorted(f["name"] for f in first["files"])
    assert names == ["ssx_data_000001.h5", "ssx_data_000002.h5", "ssx_data_000003.h5",
                     "ssx_master.h5", "ssx_truth.json"]
    for f in first["files"]:
        assert f["copied"]
        assert f["sha256"] == sha256_file(Path(run512["master"]).parent / f["name"])
        assert f["sha256"] == sha256_file(tmp_path / "staging" / f["name"])
    again = steps.transfer_raw(run512["master"], str(tmp_path / "staging"))
    assert not any(f["copied"] for f in again["files"])
    assert steps.plan_chunks(again["master"], 40)[0]["stop"] == 40  # links still resolve


def test_copy_replaces_a_damaged_copy(tmp_path):
    src = tmp_path / "a.bin"
    src.write_bytes(b"x" * 5000)
    dst = tmp_path / "out" / "a.bin"
    copy_verified(src, dst)
    dst.write_bytes(b"y" * 5000)  # same size, other content
    assert copy_verified(src, dst)["copied"]
    assert dst.read_bytes() == src.read_bytes()


def test_chunks_cover_the_run_and_agree_with_one_pass(run512):
    chunks = steps.plan_chunks(run512["master"], 12)
    assert [(c["start"], c["stop"]) for c in chunks] == [(0, 12), (12, 24), (24, 36), (36, 40)]
    with pytest.raises(ValueError):
        steps.plan_chunks(run512["master"], 0)
    parts = [steps.analyse_chunk(**c) for c in chunks]  # chunks straddle data files
    whole = steps.analyse_chunk(run512["master"], 0, 40)
    assert [f for p in parts for f in p["frames"]] == whole["frames"]
    assert np.array_equal(np.maximum.reduce([p["max_projection"] for p in parts]),
                          whole["max_projection"])
    with ThreadPoolExecutor(2) as pool:  # worker threads share the cached pyFAI integrator
        threaded = list(pool.map(lambda c: steps.analyse_chunk(**c), chunks))
    assert [p["frames"] for p in threaded] == [p["frames"] for p in parts]
    check = steps.check_threshold(parts, 0.2)
    assert check["passed"] and check["n_frames"] == 40
    assert not steps.check_threshold(parts, check["hit_rate"] + 0.01)["passed"]


def test_qa_writes_numbers_and_plots(run512, tmp_path):
    chunks = [steps.analyse_chunk(run512["master"], s, s + 20) for s in (0, 20)]
    summary = steps.qa(chunks, str(tmp_path / "qa"), title="test run", truth=run512["truth"])
    out = tmp_path / "qa"
    for name in summary["plots"].values():
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    saved = json.loads((out / "qa_summary.json").read_text())
    assert saved["n_frames"] == 40 and saved["hit_rate"] == summary["hit_rate"]
    assert sum(saved["spot_histogram"]["counts"]) == 40
    assert summary["evaluation"]["recall"] >= 0.95
    assert (out / "frames.csv").read_text().count("\n") == 41
    profiles = np.loadtxt(out / "profiles.csv", delimiter=",", skiprows=1)
    q_peak = profiles[np.argmax(profiles[:, 1]), 0]
    assert abs(q_peak - 2.0) < 0.1  # the mean background shows the water ring
    assert profiles[:, 2].sum() > 0  # and the virtual powder pattern has the spots
    assert np.load(out / "max_projection.npy").shape == (256, 256)


def test_deposit_writes_a_manifest_sha256sum_accepts(tmp_path):
    results = tmp_path / "results"
    (results / "sub").mkdir(parents=True)
    (results / "a.txt").write_text("alpha")
    (results / "sub" / "b.txt").write_text("beta")
    stored = deposit(results, tmp_path / "repo", "ds1")
    folder = Path(stored["path"])
    assert not results.exists() and stored["files"] == 3
    check = subprocess.run(["sha256sum", "-c", MANIFEST], cwd=folder, capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert verify_manifest(folder) == []
    (folder / "a.txt").write_text("tampered")
    (folder / "c.txt").write_text("new")
    assert verify_manifest(folder) == ["checksum mismatch: a.txt", "not in manifest: c.txt"]
    (tmp_path / "again").mkdir()
    with pytest.raises(FileExistsError):
        deposit(tmp_path / "again", tmp_path / "repo", "ds1")


def test_pipeline_on_process_pool_publishes_a_private_dataset(run512, tmp_path):
    catalogue = str(tmp_path / "catalogue.sqlite")
    # "spawn": children import the steps by name, as a remote worker would.
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        result = run_pipeline(run512["master"], str(tmp_path / "work"), executor=pool,
                              frames_per_chunk=16, threshold=0.1,
                              repository=str(tmp_path / "repo"), catalogue=catalogue,
                              owner="alice", allowed_users=["bob"], title="lysozyme test run")
    assert result["chunks"] == 3 and result["check"]["passed"]
    evaluation = result["qa"]["evaluation"]
    assert evaluation["precision"] >= 0.95 and evaluation["recall"] >= 0.95
    published = result["published"]
    folder = Path(published["path"])
    assert verify_manifest(folder) == []
    assert {"qa_summary.json", "metadata.json", "hits.png", "frames.csv"} <= {
        p.name for p in folder.iterdir()}
    cat = Catalogue(catalogue)
    [hit] = cat.search("lysozyme", user="bob")
    assert hit["id"] == published["dataset_id"] and hit["path"] == str(folder)
    entry = cat.get(hit["id"], user="alice")
    assert entry["record"]["run"]["n_frames"] == 40
    assert entry["record"]["instrument"]["geometry"]["shape"] == [512, 512]
    assert cat.search("lysozyme", user="eve") == []
    with pytest.raises(PermissionError):
        cat.get(hit["id"], user="eve")


def test_pipeline_below_threshold_publishes_nothing(run512, tmp_path):
    result = run_pipeline(run512["master"], str(tmp_path / "work"), frames_per_chunk=40,
                          threshold=0.99, repository=str(tmp_path / "repo"),
                          catalogue=str(tmp_path / "c.sqlite"), owner="alice")
    assert not result["check"]["passed"] and result["published"] is None
    assert not (tmp_path / "repo").exists()
    assert (tmp_path / "work" / "outbox" / "qa_summary.json").exists()  # QA is still kept
    shutil.rmtree(tmp_path / "work")


def test_cli_simulate_and_analyse(tmp_path):
    runner = CliRunner()
    out = runner.invoke(ssx, ["simulate", str(tmp_path / "data"), "--frames", "8", "--shape",
                              "256", "--frames-per-file", "4", "--hit-fraction", "0.5"])
    assert out.exit_code == 0, out.output
    master = tmp_path / "data" / "ssx_master.h5"
    out = runner.invoke(ssx, ["analyse", str(master), "--out", str(tmp_path / "qa"),
                              "--params", '{"min_spots": 8}'])
    assert out.exit_code == 0, out.output
    assert "precision" in out.output and "recall" in out.output
    summary = json.loads((tmp_path / "qa" / "qa_summary.json").read_text())
    assert summary["n_frames"] == 8
    out = runner.invoke(ssx, ["analyse", str(master), "--params", '{"bogus": 1}'])
    assert out.exit_code != 0 and "unknown spot-finder parameters" in str(out.exception)


def test_chunks_saved_to_files_give_small_json_references(run512, tmp_path):
    refs = [steps.analyse_chunk(**c, out_dir=str(tmp_path / "chunks"))
            for c in steps.plan_chunks(run512["master"], 20)]
    assert len(json.dumps(refs)) < 2000  # fits an Airflow XCom
    full = [steps.analyse_chunk(**c) for c in steps.plan_chunks(run512["master"], 20)]
    assert steps.check_threshold(refs, 0.3) == steps.check_threshold(full, 0.3)
    loaded = steps.load_chunk(refs[1]["path"])
    assert loaded["frames"] == full[1]["frames"]
    assert np.array_equal(loaded["max_projection"], full[1]["max_projection"])
    from_refs = steps.qa(refs, str(tmp_path / "qa1"))
    from_full = steps.qa(full, str(tmp_path / "qa2"))
    for key in ("n_frames", "n_hits", "hit_rate", "spot_histogram", "median_background"):
        assert from_refs[key] == from_full[key]
