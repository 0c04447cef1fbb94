"""Run the ``ssx_pipeline`` DAG with ``airflow dags test`` from Python (used by the demo, the
tests and the benchmark): an AIRFLOW_HOME with a migrated SQLite database, the DAGs folder set
to this folder, the run's settings as the DAG run's conf, and the record read back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLOWS = Path(__file__).resolve().parent
DAG_FILE = FLOWS / "airflow_dag.py"


def airflow_env(airflow_home: str | os.PathLike) -> dict[str, str]:
    """The environment of an ``airflow`` command using ``airflow_home`` and this DAGs folder."""
    return {**os.environ, "AIRFLOW_HOME": str(airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(FLOWS),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "300",
            "PYTHONUNBUFFERED": "1"}


def airflow_command() -> str:
    """The ``airflow`` script next to this Python (a venv), else the one on PATH."""
    beside = Path(sys.executable).with_name("airflow")
    return str(beside) if beside.exists() else "airflow"


def prepare_airflow_home(airflow_home: str | os.PathLike, timeout: float = 600) -> Path:
    """Create and migrate the metadata database once (``airflow db migrate``; a marker file
    records which Airflow version migrated it)."""
    from importlib.metadata import version

    home = Path(airflow_home)
    home.mkdir(parents=True, exist_ok=True)
    marker = home / "fedcompute-ssx-migrated"
    wanted = version("apache-airflow")
    if marker.exists() and marker.read_text() == wanted:
        return home
    done = subprocess.run([airflow_command(), "db", "migrate"], env=airflow_env(home),
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"airflow db migrate failed ({done.returncode}):\n"
                           f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    marker.write_text(wanted)
    return home


def run_airflow(master: str, work_dir: str, *, endpoint_id: str, client=None,
                airflow_home: str | os.PathLike | None = None, timeout: float = 3600,
                **options) -> dict:
    """``airflow dags test ssx_pipeline`` with ``master``, ``work_dir``, ``endpoint_id`` and
    ``options`` (the DAG's params) as conf; returns the pipeline record the ``report`` task
    wrote. The fedcompute service and token come from the ``fedcompute_default`` connection or,
    without one, from the environment (``client`` is given, its URL and token are passed)."""
    home = prepare_airflow_home(airflow_home or os.environ.get("AIRFLOW_HOME")
                                or Path(tempfile.gettempdir()) / "fedcompute-ssx-airflow")
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    report = work / "pipeline.json"
    report.unlink(missing_ok=True)
    conf = {"master": str(master), "work_dir": str(work_dir), "endpoint_id": endpoint_id,
            "report": str(report), **options}
    env = airflow_env(home)
    if client is not None:
        env.pop("AIRFLOW_CONN_FEDCOMPUTE_DEFAULT", None)
        env.update(FEDCOMPUTE_SERVICE_URL=client.service_url, FEDCOMPUTE_TOKEN=client.token)
    log = work / "airflow-dags-test.log"
    t0 = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run([airflow_command(), "dags", "test", "ssx_pipeline", "-c",
                               json.dumps(conf), "-f", str(DAG_FILE)], env=env, stdout=out,
                              stderr=subprocess.STDOUT, timeout=timeout, cwd=work)
    text = log.read_text()
    if done.returncode or not report.exists() or "state=success" not in text:
        raise RuntimeError(f"airflow dags test ssx_pipeline failed (exit {done.returncode}); "
                           f"log {log}:\n{text[-5000:]}")
    record = json.loads(report.read_text())
    record["wall_seconds"] = time.perf_counter() - t0
    record["log"] = str(log)
    return record
