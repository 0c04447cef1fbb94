"""The SSX pipeline end to end on each engine — Prefect (FederatedTaskRunner), Airflow
(RemoteFunctionOperator, ``airflow dags test``), Dask (``Client(FederatedCluster)``) and the
plain Executor — against the real stack (``fed_stack``), and the one-command demo.

Each run goes through ``python -m fedcompute_ssx pipeline`` in a subprocess, as a user runs it:
Prefect gets its own temporary server and PREFECT_HOME, Airflow its own migrated AIRFLOW_HOME,
and neither touches this process (the adapter suites configure both in-process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import psutil
import pytest
from fedcompute_ssx.catalogue import Catalogue
from fedcompute_ssx.repository import verify_manifest
from fedcompute_ssx.simulate import simulate_run
from PIL import Image

ENGINES = ["prefect", "airflow", "dask", "executor"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FRAMES, CHUNK = 32, 8  # 4 analysis tasks


@pytest.fixture(scope="module")
def beamline_run(tmp_path_factory) -> dict:
    """32 frames of 512×512 in two data files; 15 true hits (hit rate ~0.47)."""
    return simulate_run(tmp_path_factory.mktemp("beamline"), n_frames=FRAMES, shape=512,
                        hit_fraction=0.5, frames_per_file=16, seed=11)


@pytest.fixture(scope="module")
def engine_env(fed_stack, tmp_path_factory) -> dict[str, str]:
    """The environment of a pipeline subprocess: the stack's URL and alice's token, and
    throwaway homes for Prefect and Airflow."""
    env = {**fed_stack.env, "FEDCOMPUTE_ENDPOINT_ID": fed_stack.endpoint_id,
           "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-home")),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING",
           "AIRFLOW_HOME": str(tmp_path_factory.mktemp("airflow-home"))}
    # Settings another suite may have left in this process's environment.
    for key in ("PREFECT_API_URL", "AIRFLOW_CONN_FEDCOMPUTE_DEFAULT",
                "AIRFLOW__CORE__DAGS_FOLDER"):
        env.pop(key, None)
    return env


def ssx_cli(env: dict[str, str], *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "fedcompute_ssx", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"ssx {' '.join(args)}:\n{done.stdout[-4000:]}\n" \
                                 f"{done.stderr[-6000:]}"
    return done


def run_pipeline(env: dict[str, str], engine: str, master: str, tmp_path: Path,
                 *options: str) -> tuple[dict, subprocess.CompletedProcess]:
    out = tmp_path / "record.json"
    done = ssx_cli(env, "pipeline", master, str(tmp_path / "work"), "--engine", engine,
                   "--frames-per-chunk", str(CHUNK), "--catalogue",
                   str(tmp_path / "catalogue.sqlite"), "--repository",
                   str(tmp_path / "repository"), "--airflow-home", env["AIRFLOW_HOME"],
                   "--json", str(out), *options)
    return json.loads(out.read_text()), done


def endpoint_processes(stack) -> set[int]:
    """The endpoint agent of ``fed_stack`` and every process under it (its Dask workers)."""
    agent = psutil.Process(stack.endpoints["local"].pid)
    return {agent.pid, *(p.pid for p in agent.children(recursive=True))}


def assert_valid_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    with Image.open(path) as image:
        image.verify()  # checks the chunks' CRCs
    pixels = matplotlib.image.imread(path)  # decodes the whole image
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels.std() > 0  # not a blank canvas


@pytest.mark.parametrize("engine", ENGINES)
def test_pipeline_finds_the_hits_and_publishes_a_private_dataset(engine, beamline_run,
                                                                 engine_env, fed_stack,
                                                                 tmp_path):
    record, done = run_pipeline(engine_env, engine, beamline_run["master"], tmp_path,
                                "--share", "bob", "--title", f"lysozyme test run on {engine}")
    assert record["engine"] == engine
    assert record["chunks"] == FRAMES // CHUNK
    check = record["check"]
    assert check["passed"] and check["n_frames"] == FRAMES
    assert check["analysis"]["chunks"] == FRAMES // CHUNK
    # The chunks were analysed by the endpoint's Dask workers, not by the engine's process.
    pids = {pid for _, pid in check["analysis"]["workers"]}
    assert pids and pids <= endpoint_processes(fed_stack)

    evaluation = record["qa"]["evaluation"]
    truth = json.loads(Path(beamline_run["truth"]).read_text())
    assert evaluation["frames"] == FRAMES and evaluation["hits_true"] == truth["n_hits"]
    assert evaluation["precision"] >= 0.95 and evaluation["recall"] >= 0.95
    assert "precision" in done.stdout and "recall" in done.stdout

    published = record["published"]
    folder = Path(published["path"])
    assert folder.parent == tmp_path / "repository"
    assert verify_manifest(folder) == []
    plots = record["qa"]["plots"]
    assert set(plots) == {"hits", "spot_histogram", "radial_profile", "max_projection"}
    for name in plots.values():
        assert_valid_png(folder / name)
    assert json.loads((folder / "qa_summary.json").read_text())["n_frames"] == FRAMES

    # The owner is the fedcompute identity of the token the pipeline ran with.
    assert published["owner"] == "alice"
    catalogue = Catalogue(tmp_path / "catalogue.sqlite")
    # "microcrystals" is only in the metadata (the sample's name in the NeXus file).
    [hit] = catalogue.search("microcrystals", user="alice")
    assert hit["id"] == published["dataset_id"] and hit["path"] == str(folder)
    assert [h["id"] for h in catalogue.search(f"lysozyme {engine}", user="alice")] == [hit["id"]]
    entry = catalogue.get(hit["id"], user="alice")
    assert entry["record"]["run"]["n_frames"] == FRAMES
    assert entry["record"]["qa"]["n_hits"] == check["n_hits"]
    assert [h["id"] for h in catalogue.search("microcrystals", user="bob")] == [hit["id"]]
    assert catalogue.search("microcrystals", user="eve") == []
    with pytest.raises(PermissionError):
        catalogue.get(hit["id"], user="eve")


@pytest.mark.parametrize("engine", ENGINES)
def test_below_the_threshold_qa_and_publication_are_skipped(engine, beamline_run, engine_env,
                                                            tmp_path):
    record, done = run_pipeline(engine_env, engine, beamline_run["master"], tmp_path,
                                "--threshold", "0.9")
    check = record["check"]
    assert not check["passed"] and 0.3 < check["hit_rate"] < 0.9
    assert check["n_frames"] == FRAMES and check["analysis"]["chunks"] == FRAMES // CHUNK
    assert record["qa"] is None and record["transfer"] is None and record["published"] is None
    assert "QA and publication skipped" in done.stdout
    work = tmp_path / "work"
    assert not (work / "results").exists() and not (work / "outbox").exists()
    assert not (tmp_path / "repository").exists()
    assert not (tmp_path / "catalogue.sqlite").exists()
    if engine == "airflow":
        log = Path(record["log"]).read_text()
        assert "[DAG TEST] starting task_id=hit_rate_gate " in log
        for task_id in ("qa", "transfer_results", "publish"):  # skipped: never started
            assert f"[DAG TEST] starting task_id={task_id} " not in log
        assert "[DAG TEST] starting task_id=report " in log


def test_demo_prints_the_summary(engine_env, tmp_path):
    catalogue = tmp_path / "catalogue.sqlite"
    done = ssx_cli(engine_env, "demo", "--engine", "dask,executor", "--frames", "24",
                   "--shape", "512", "--frames-per-chunk", "12", "--seed", "3",
                   "--work-dir", str(tmp_path / "demo"), "--catalogue", str(catalogue),
                   "--share", "bob", "--json", str(tmp_path / "demo.json"))
    out = done.stdout
    assert "Summary: 24 frames 512x512" in out
    for engine in ("dask", "executor"):
        row = next(line for line in out.splitlines() if line.startswith(f"{engine} "))
        fields = row.split()
        assert fields[1] == "24" and float(fields[3]) >= 0.95 and float(fields[4]) >= 0.95
    assert out.count("QA plots:") == 2 and "search it:  python -m fedcompute_ssx search" in out
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert summary["owner"] == "alice"
    assert len(Catalogue(catalogue).search("lysozyme demo", user="bob")) == 2
    # The generated frames and staged copies are removed; the published results stay.
    assert not (tmp_path / "demo" / "beamline").exists()
    assert not (tmp_path / "demo" / "dask" / "raw").exists()
    for run in summary["runs"].values():
        assert_valid_png(Path(run["published"]["path"]) / "hits.png")
    assert os.path.commonpath([run["published"]["path"] for run in summary["runs"].values()]) \
        == str(tmp_path / "repository")
