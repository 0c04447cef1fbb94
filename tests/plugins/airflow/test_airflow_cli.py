"""The provider as the ``airflow`` command line sees it, and DAG files run by ``airflow dags
test`` (DAG files are imported under mangled module names, so their functions travel by value),
including ``on_kill`` through a real SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import jsonschema
import pytest
from fedcompute.plugins.airflow.provider import get_provider_info

from .conftest import REPO, airflow_cli, connection_json

EXAMPLES = REPO / "examples" / "airflow"


@pytest.fixture
def cli_home(airflow_env, tmp_path_factory):
    """``make(dags_folder) -> env``: a fresh, migrated AIRFLOW_HOME whose DAGs folder is
    ``dags_folder`` and whose ``fedcompute_default`` connection points at ``fed_stack``."""

    def make(dags_folder: Path) -> dict[str, str]:
        home = tmp_path_factory.mktemp("airflow-cli-home")
        env = {"AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
               "AIRFLOW_CONN_FEDCOMPUTE_DEFAULT": connection_json(airflow_env),
               "PYTHONUNBUFFERED": "1"}
        airflow_cli("db", "migrate", env=env)
        return env

    return make


def test_provider_info_matches_airflow_schema():
    import airflow

    info = get_provider_info()
    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    jsonschema.validate(info, schema)
    assert info["package-name"] == "fedcompute"  # the distribution's name


def test_airflow_providers_commands_show_the_provider(airflow_db):
    listed = airflow_cli("providers", "list", "-o", "json").stdout
    providers = {p["package_name"]: p for p in json.loads(listed[listed.index("["):])}
    assert providers["fedcompute"]["version"] == get_provider_info()["versions"][0]

    hooks = airflow_cli("providers", "hooks", "-o", "json").stdout
    by_type = {h["connection_type"]: h for h in json.loads(hooks[hooks.index("["):])}
    assert by_type["fedcompute"]["class"] == \
        "fedcompute.plugins.airflow.hooks.FederatedComputeHook"
    assert by_type["fedcompute"]["conn_id_attribute_name"] == "fedcompute_conn_id"

    triggers = airflow_cli("providers", "triggers").stdout
    assert "fedcompute.plugins.airflow.triggers" in triggers
    fields = airflow_cli("providers", "widgets").stdout
    assert "extra__fedcompute__endpoint_id" in fields
    behaviours = airflow_cli("providers", "behaviours").stdout
    assert "fedcompute" in behaviours


def test_example_dag_with_airflow_dags_test(cli_home):
    env = cli_home(EXAMPLES)
    done = airflow_cli("dags", "test", "fedcompute_example", env=env, check=False)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-5000:]
    assert re.search(r"pi is about 3\.1\d", log)
    assert "running on" in log
    assert "DagRun Finished: dag_id=fedcompute_example" in log and "state=success" in log
    assert log.count("Submitted remote task") == 6  # where, 4 x sample, estimate
    assert "Pausing task as DEFERRED" in log  # estimate waited in the (inline) triggerer


ON_KILL_DAG = '''
import datetime as dt

from airflow.sdk import DAG
from fedcompute.plugins.airflow import RemoteFunctionOperator


def sleeps_marked(folder):
    import os
    import time

    open(os.path.join(folder, "started"), "w").close()
    try:
        for _ in range(1200):
            time.sleep(0.1)
    except BaseException as exc:
        with open(os.path.join(folder, "stopped"), "w") as f:
            f.write(type(exc).__name__)
        raise
    return "ran"


with DAG("fc_on_kill", schedule=None, start_date=dt.datetime(2024, 1, 1)) as dag:
    RemoteFunctionOperator(task_id="remote", python_callable=sleeps_marked,
                           op_args=["{folder}"], endpoint_id="{endpoint_id}", poll_interval=1,
                           deferrable=False)
'''


@pytest.mark.parametrize("where", ["queued", "running"])
def test_sigterm_runs_on_kill_which_cancels_the_remote_task(cli_home, fed_stack, tmp_path,
                                                            where):
    """Airflow kills the task (SIGTERM: a timeout, a task marked failed, ``airflow tasks
    kill``): ``on_kill`` cancels the remote task, queued (on an endpoint never started) or
    running (stopped at the endpoint: TaskCancelled in the remote body)."""
    client = fed_stack.client()
    endpoint = (client.register_endpoint("airflow-offline")["endpoint_id"]
                if where == "queued" else fed_stack.endpoint_id)
    marks = tmp_path / "marks"
    marks.mkdir()
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "fc_on_kill.py").write_text(textwrap.dedent(ON_KILL_DAG).format(
        endpoint_id=endpoint, folder=marks))
    env = {**os.environ, **cli_home(dags)}
    proc = subprocess.Popen([str(Path(sys.executable).with_name("airflow")), "dags", "test",
                             "fc_on_kill"], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    submitted = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if "Submitted remote task" in line:
                submitted.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert submitted.wait(300), "".join(lines)[-5000:]
        task_id = re.search(r"Submitted remote task ([0-9a-f-]{36})", "".join(lines)).group(1)
        if where == "queued":
            assert client.get_task(task_id)["status"] == "waiting-for-endpoint"
        else:
            deadline = time.monotonic() + 120
            while client.get_task(task_id)["status"] != "running":
                assert time.monotonic() < deadline, "the remote task never ran"
                time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(10)
    log = "".join(lines)
    deadline = time.monotonic() + 60
    while client.get_task(task_id)["status"] != "cancelled" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert client.get_task(task_id)["status"] == "cancelled", log[-5000:]
    assert f"Cancelled remote task {task_id}" in log
    if where == "running":
        assert (marks / "stopped").read_text() == "TaskCancelled"
    else:
        assert not (marks / "started").exists()


def test_hook_reads_connections_and_reaches_the_service(airflow_env):
    from airflow.sdk import Connection
    from fedcompute.plugins.airflow import FederatedComputeHook
    from fedcompute.plugins.airflow.hooks import ServiceSettings, settings_from_connection

    uri = Connection.from_uri("fedcompute://:tok@compute.example.org:8443/?endpoint_id=ep1",
                              conn_id="x")
    assert settings_from_connection(uri) == ServiceSettings(
        "https://compute.example.org:8443", "tok", "ep1", True)
    plain = Connection(conn_id="y", conn_type="fedcompute", host="localhost", port=5000,
                       schema="http", password="t",
                       extra=json.dumps({"extra__fedcompute__endpoint_id": "ep2",
                                         "verify": "false"}))
    assert settings_from_connection(plain) == ServiceSettings("http://localhost:5000", "t", "ep2",
                                                              False)
    url = Connection.from_json(connection_json(airflow_env), conn_id="z")
    assert settings_from_connection(url).service_url == airflow_env.service_url

    hook = FederatedComputeHook()  # fedcompute_default, from AIRFLOW_CONN_FEDCOMPUTE_DEFAULT
    assert hook.endpoint_id == airflow_env.endpoint_id
    ok, message = hook.test_connection()
    assert ok and "alice" in message
    bad = FederatedComputeHook(settings=settings_from_connection(Connection(
        conn_id="bad", conn_type="fedcompute", host=airflow_env.service_url, password="nope")))
    ok, message = bad.test_connection()
    assert not ok and "401" in message


def test_trigger_serialization_round_trips():
    from airflow.sdk.module_loading import import_string
    from fedcompute.plugins.airflow import RemoteTaskTrigger

    trigger = RemoteTaskTrigger("t1", "g1", deadline=time.time() + 60,
                                fedcompute_conn_id="other", poll_interval=2)
    classpath, kwargs = trigger.serialize()
    json.dumps(kwargs)  # stored by Airflow as JSON
    again = import_string(classpath)(**kwargs)
    assert isinstance(again, RemoteTaskTrigger)
    assert again.serialize() == (classpath, kwargs)


@pytest.mark.parametrize("setting", ["true", "false"])
def test_deferrable_defaults_to_operators_default_deferrable(setting):
    code = ("from fedcompute.plugins.airflow import RemoteFunctionOperator as R, "
            "RemoteShellOperator as S\n"
            "print(R(task_id='f', python_callable=print).deferrable, "
            "S(task_id='s', command='true').deferrable, "
            "R(task_id='g', python_callable=print, deferrable=False).deferrable)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE": setting},
                          timeout=300, check=True)
    expected = "True True False" if setting == "true" else "False False False"
    assert done.stdout.strip().splitlines()[-1] == expected


def test_conftest_keeps_airflow_state_out_of_home():
    assert os.environ["AIRFLOW_HOME"].startswith(tempfile.gettempdir())
