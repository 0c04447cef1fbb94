"""Fixtures for the Airflow adapter: a throwaway AIRFLOW_HOME (SQLite, migrated with the real
``airflow db migrate``), a ``fedcompute_default`` connection to the session's ``fed_stack``, and
``run_dag`` which syncs a DAG to the DB and runs it with ``dag.test()``."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Airflow reads AIRFLOW_HOME when it is first imported (test modules import it at collection),
# so it is set here, at conftest import time. Never ~/airflow.
if "airflow" in sys.modules and not os.environ.get("AIRFLOW_HOME", "").startswith(
        tempfile.gettempdir()):
    raise pytest.UsageError("airflow was imported before tests/plugins/airflow/conftest.py; "
                            "it would use ~/airflow")
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="fedcompute-airflow-"))
atexit.register(shutil.rmtree, AIRFLOW_HOME, ignore_errors=True)
DAGS_FOLDER = AIRFLOW_HOME / "dags"
DAGS_FOLDER.mkdir()
AIRFLOW_ENV = {
    "AIRFLOW_HOME": str(AIRFLOW_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "120",
    "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
}
os.environ.update(AIRFLOW_ENV)

REPO = Path(__file__).resolve().parents[3]


def airflow_cli(*args: str, env: dict | None = None, timeout: float = 600,
                check: bool = True) -> subprocess.CompletedProcess:
    """Run the ``airflow`` CLI of this venv with the test AIRFLOW_HOME."""
    done = subprocess.run([str(Path(sys.executable).with_name("airflow")), *args],
                          env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)
    if check and done.returncode:
        raise AssertionError(f"airflow {' '.join(args)} failed ({done.returncode}):\n"
                             f"{done.stdout[-5000:]}\n{done.stderr[-5000:]}")
    return done


@pytest.fixture(scope="session")
def airflow_db():
    """The migrated SQLite metadata DB of the test AIRFLOW_HOME (removed at exit)."""
    airflow_cli("db", "migrate")
    return AIRFLOW_HOME


def connection_json(stack, **extra) -> str:
    """The ``AIRFLOW_CONN_FEDCOMPUTE_DEFAULT`` value for a stack."""
    return json.dumps({"conn_type": "fedcompute", "host": stack.service_url,
                       "password": stack.token,
                       "extra": {"endpoint_id": stack.endpoint_id, **extra}})


@pytest.fixture(scope="session")
def airflow_env(fed_stack, airflow_db):
    """Airflow set up to reach ``fed_stack`` through the ``fedcompute_default`` connection."""
    os.environ["AIRFLOW_CONN_FEDCOMPUTE_DEFAULT"] = connection_json(fed_stack)
    yield fed_stack
    os.environ.pop("AIRFLOW_CONN_FEDCOMPUTE_DEFAULT", None)


@pytest.fixture
def run_dag(airflow_env):
    """``run_dag(dag) -> DagRun``: sync a DAG defined in a test to the DB, then ``dag.test()``."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    def run(dag, **kwargs):
        DagBundlesManager().sync_bundles_to_db()
        bag = DagBag(dag_folder=str(DAGS_FOLDER), include_examples=False)
        bag.bag_dag(dag)
        sync_bag_to_db(bag, "dags-folder", None)
        return dag.test(**kwargs)

    return run
