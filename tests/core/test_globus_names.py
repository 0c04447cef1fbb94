"""Globus Compute's SDK names, used as its documentation describes them (issue 18): code written
for ``globus_compute_sdk`` runs with only the import changed to ``fedcompute``.

The unit tests need no stack; the others run through the real one (``fed_stack``).
"""

from __future__ import annotations

import concurrent.futures
import inspect
import time
import uuid
import warnings

import pytest
from fedcompute import Client, ComputeFuture, Executor, ShellFunction, ShellResult, serialize
from fedcompute.client import SourceFunction
from fedcompute.endpoint.engines.resources import dask_resources, worker_resources_arg
from fedcompute.errors import IgnoredOptionWarning, VersionMismatch
from fedcompute.shell import run_hardware_report

from tests.reliability.agent_api import FakeAgent, success

#: An address nothing listens on: unit tests never reach a service.
NOWHERE = "http://127.0.0.1:9"


def offline_client() -> Client:
    return Client(NOWHERE, "fcu_unit")


def wait_for(condition, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# --- ShellFunction / ShellResult (unit: the command runs here) -------------------------------

def test_shell_function_signature_is_globus_computes():
    names = list(inspect.signature(ShellFunction).parameters)
    assert names[:7] == ["cmd", "stdout", "stderr", "walltime", "snippet_lines", "name",
                         "return_dict"]
    assert list(inspect.signature(ShellResult).parameters)[:5] == [
        "cmd", "stdout", "stderr", "returncode", "exception_name"]


def test_str_of_shell_result_shows_exit_code_and_output():
    ok = ShellResult("echo hi", "hi\n", "", 0)
    assert str(ok) == "exit code: 0\n   stdout:\nhi"
    failed = ShellResult("f", "out\n", "bad thing\n", 2, "subprocess.CalledProcessError")
    assert str(failed) == ("exit code: 2\n   stdout:\nout\n\n   stderr:\nbad thing\n\n"
                           "exception: subprocess.CalledProcessError")
    many = ShellResult("seq", "".join(f"{i}\n" for i in range(50)), "", 0)
    shown = str(many).splitlines()
    assert "truncated; see .stdout" in shown[2] and shown[-1] == "49" and len(shown) == 13


def test_shell_function_return_dict_and_exception_names():
    assert ShellFunction("echo {word}; exit 3", return_dict=True)(word="hey") == {
        "cmd": "echo hey; exit 3", "stdout": "hey\n", "stderr": "", "returncode": 3,
        "exception_name": "subprocess.CalledProcessError"}
    result = ShellFunction("echo fine")()
    assert isinstance(result, ShellResult) and result.exception_name is None


def test_shell_function_stdout_stderr_files(tmp_path):
    out, err = tmp_path / "logs" / "run.out", tmp_path / "logs" / "run.err"
    fn = ShellFunction("seq 1 5; echo oops >&2", stdout=str(out), stderr=str(err),
                       snippet_lines=2)
    first = fn()
    assert (first.stdout, first.stderr) == ("4\n5\n", "oops\n")
    fn()  # appended to, and the snippet is the file's end
    assert out.read_text() == "1\n2\n3\n4\n5\n" * 2
    assert err.read_text() == "oops\n" * 2


def test_shell_function_walltime_stops_the_whole_command():
    started = time.monotonic()
    result = ShellFunction("echo begun; sleep 30; echo never", walltime=0.5)()
    assert time.monotonic() - started < 10
    assert result.returncode == 124
    assert result.exception_name == "subprocess.TimeoutExpired"
    assert result.stdout == "begun\n"


def test_shell_function_uses_bash_name_and_checks():
    assert ShellFunction("[[ 1 == 1 ]] && echo bash")().stdout == "bash\n"
    assert ShellFunction("true", name="my_step").__name__ == "my_step"
    with pytest.raises(ValueError):
        ShellFunction("true", name="not valid")
    with pytest.raises(ValueError):
        ShellFunction("true", walltime=-1)


def test_hardware_report_runs_here():
    report = run_hardware_report("unit")
    assert report.startswith("== unit == == python ==") and "cpu count:" in report


# --- Executor attributes (unit) --------------------------------------------------------------

def test_executor_ids_are_uuids():
    ep, group = uuid.uuid4(), uuid.uuid4()
    ex = Executor(endpoint_id=str(ep), client=offline_client(), task_group_id=str(group))
    assert ex.endpoint_id == ep and isinstance(ex.endpoint_id, uuid.UUID)
    assert ex.task_group_id == group and isinstance(ex.task_group_id, uuid.UUID)
    ex.endpoint_id = ep
    ex.task_group_id = group
    assert isinstance(Executor(client=offline_client()).task_group_id, uuid.UUID)
    with pytest.raises(ValueError, match="endpoint_id"):
        ex.endpoint_id = "not-a-uuid"
    with pytest.raises(ValueError, match="no endpoint"):
        Executor(endpoint_id=None, client=offline_client()).submit(print)


def test_executor_options_are_checked_like_globus():
    ex = Executor(client=offline_client(), resource_specification={"foo": "bar"},
                  user_endpoint_config={"worker_init": "a"}, label="mine")
    assert ex.resource_specification == {"foo": "bar"}
    assert ex.user_endpoint_config == {"worker_init": "a"}
    ex.user_endpoint_config["worker_init"] = "b"  # the documented way to change it
    assert ex.user_endpoint_config == {"worker_init": "b"}
    assert "mine" in repr(ex)
    for attr in ("resource_specification", "user_endpoint_config"):
        with pytest.raises(TypeError):
            setattr(ex, attr, ["not", "a", "dict"])
        with pytest.raises(TypeError):
            setattr(ex, attr, {"x": object()})


def test_executor_positional_order_is_globus_computes():
    names = list(inspect.signature(Executor).parameters)
    assert names[:10] == ["endpoint_id", "client", "task_group_id", "resource_specification",
                          "user_endpoint_config", "label", "batch_size", "amqp_port",
                          "api_burst_limit", "api_burst_window_s"]


def test_amqp_port_is_accepted_with_one_warning():
    from fedcompute import client as client_module

    client_module._warned.discard("Executor(amqp_port=...)")
    with pytest.warns(IgnoredOptionWarning, match="amqp_port"):
        ex = Executor(client=offline_client(), amqp_port=443)
    assert ex.amqp_port == 443
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Executor(client=offline_client(), amqp_port=5671)  # once per process


def test_api_burst_limit_paces_submission_requests():
    ex = Executor(client=offline_client(), api_burst_limit=2, api_burst_window_s=1)
    assert (ex.api_burst_limit, ex.api_burst_window_s) == (2, 1)
    started = time.monotonic()
    for _ in range(3):
        ex._submitter._pace()
    assert time.monotonic() - started >= 0.9  # the third request waited for the window
    clamped = Executor(client=offline_client(), api_burst_limit=100, api_burst_window_s=0)
    assert (clamped.api_burst_limit, clamped.api_burst_window_s) == (8, 1)
    assert Executor(client=offline_client()).api_burst_limit is None  # no client-side pacing


# --- Client and Batch (unit) -----------------------------------------------------------------

def test_register_function_positional_arguments_are_globus_computes():
    params = list(inspect.signature(Client.register_function).parameters)
    assert params[1:7] == ["function", "description", "metadata", "public", "group",
                           "ha_endpoint_id"]


def test_batch_prepare_len_and_argument_checks():
    client = offline_client()
    batch = client.create_batch(user_endpoint_config={"account": "x"},
                                resource_specification={"GPU": 1})
    assert batch.task_group_id == client.session_task_group_id
    fid = str(uuid.uuid4())
    batch.add(fid, args=(1,), kwargs={"k": 2})
    batch.add(uuid.UUID(fid))
    assert len(batch) == 2
    body = batch.prepare()
    assert body["task_group_id"] == client.session_task_group_id
    assert [t["function_id"] for t in body["tasks"]] == [fid, fid]
    assert body["tasks"][0]["options"] == {"user_endpoint_config": {"account": "x"}}
    assert body["tasks"][0]["resource_specification"] == {"GPU": 1}
    with pytest.raises(TypeError):
        batch.add(fid, "not a tuple")
    with pytest.raises(TypeError):
        batch.add(fid, (), ["not a dict"])
    with pytest.raises(ValueError, match="No tasks"):
        client.batch_run(str(uuid.uuid4()), client.create_batch())


def test_source_function_runs_its_source_and_travels():
    fn = SourceFunction("import math\n\ndef area(r):\n    return math.pi * r * r\n", "area")
    again = serialize.loads(serialize.dumps(fn))
    assert again(1) == pytest.approx(3.14159, rel=1e-4) and again.__name__ == "area"
    with pytest.raises(NameError, match="nothing"):
        SourceFunction("x = 1", "nothing")()


# --- resource_specification at the endpoint (unit) -------------------------------------------

def test_unknown_resource_keys_are_engine_options():
    spec = dask_resources({"GPU": 1, "walltime": 60, "num_nodes": 2, "priority": 5,
                           "foo": "bar", "exclusive": True})
    assert spec == {"resources": {"GPU": 1}, "walltime": 60.0,
                    "options": {"num_nodes": 2, "priority": 5, "foo": "bar", "exclusive": True}}
    assert dask_resources(None)["options"] is None
    for bad in ({"GPU": 0}, {"GPU": -1}, {"GPU": float("nan")}, {"GPU": "2"},
                {"bad name": 1}, {"walltime": "never"}):
        with pytest.raises(ValueError):
            dask_resources(bad)
    with pytest.raises(ValueError, match="GPU"):  # a resource the workers advertise
        dask_resources({"GPU": "one"}, resource_names={"GPU"})
    with pytest.raises(ValueError, match="GPU"):  # a worker's own resources are amounts
        worker_resources_arg({"GPU": "one"})


# --- through the real stack ------------------------------------------------------------------

def noisy_multiply(x, y, noise=0, offset=0):
    return x * y + noise + offset


def platform_func():
    """Get platform information about this system."""
    import platform

    return platform.platform()


def task_kernel(num):
    return f"result of task {num}"


def test_shell_functions_through_the_endpoint(fed_stack, tmp_path):
    log = tmp_path / "shell" / "out.log"
    with Executor(endpoint_id=fed_stack.endpoint_id, client=fed_stack.client()) as ex:
        as_dict = ex.submit(ShellFunction("echo '{message}'", return_dict=True),
                            message="hola").result(timeout=60)
        to_file = ex.submit(ShellFunction("echo saved", stdout=str(log))).result(timeout=60)
        stopped = ex.submit(ShellFunction("sleep 20", walltime=1)).result(timeout=60)
    assert isinstance(as_dict, dict) and as_dict["stdout"] == "hola\n"
    assert as_dict["returncode"] == 0 and as_dict["exception_name"] is None
    assert str(to_file) == "exit code: 0\n   stdout:\nsaved"
    assert log.read_text() == "saved\n"  # the endpoint runs on this machine
    assert (stopped.returncode, stopped.exception_name) == (124, "subprocess.TimeoutExpired")


def test_user_endpoint_config_and_unknown_resources_reach_the_endpoint(fed_stack):
    client = fed_stack.client()
    registered = client.register_endpoint("globus-names-parked")
    agent = FakeAgent(fed_stack.service_url, registered["credential"])
    agent.connect()
    ex = Executor(registered["endpoint_id"], client=client,
                  user_endpoint_config={"worker_init": "source venv1/bin/activate"},
                  resource_specification={"num_nodes": 2, "queue": "debug"})
    try:
        first = ex.submit(noisy_multiply, 2, 3)
        ex.user_endpoint_config["worker_init"] = "source venv2/bin/activate"
        second = ex.submit(noisy_multiply, 4, 5)
        leased: dict[str, dict] = {}

        def lease_both():
            for task in agent.lease(wait=1)["tasks"]:
                leased[task["task_id"]] = task
            return len(leased) == 2

        wait_for(lease_both, what="both tasks leased")
        for future, init in ((first, "venv1"), (second, "venv2")):
            task = leased[future.task_id]
            assert task["options"]["user_endpoint_config"] == {
                "worker_init": f"source {init}/bin/activate"}
            assert task["resource_specification"] == {"num_nodes": 2, "queue": "debug"}
        agent.results([success(t, serialize.dumps(i)) for i, t in enumerate(leased)])
        assert sorted(f.result(timeout=60) for f in (first, second)) == [0, 1]
        assert ex.task_count_submitted == 2
    finally:
        ex.shutdown(wait=False)
        agent.close()
        client.delete_endpoint(registered["endpoint_id"])


def test_unknown_resource_keys_run_on_a_real_endpoint(fed_stack):
    with Executor(fed_stack.endpoint_id, client=fed_stack.client(),
                  resource_specification={"foo": "bar", "num_ranks": 1}) as ex:
        assert ex.submit(noisy_multiply, 6, 7).result(timeout=60) == 42


def test_reload_tasks_after_task_count_submitted(fed_stack):
    ex = Executor(endpoint_id=fed_stack.endpoint_id, client=fed_stack.client())
    futures = [ex.submit(task_kernel, i) for i in range(5)]
    wait_for(lambda: ex.task_count_submitted == 5, what="tasks sent upstream")
    group = ex.task_group_id
    ex.shutdown(wait=True)
    with Executor(endpoint_id=fed_stack.endpoint_id, client=fed_stack.client()) as again:
        again.task_group_id = str(group)
        reloaded = again.reload_tasks()
        assert [f.task_id for f in reloaded] == [f.task_id for f in futures]
        assert all(isinstance(f, ComputeFuture) for f in reloaded)
        results = [f.result(timeout=60) for f in concurrent.futures.as_completed(reloaded)]
    assert sorted(results) == sorted(task_kernel(i) for i in range(5))


def test_registered_functions_and_source_code(fed_stack):
    client = fed_stack.client()
    fid = client.register_function(noisy_multiply)
    with Executor(endpoint_id=fed_stack.endpoint_id, client=client) as ex:
        assert ex.register_function(task_kernel, function_id=fid) == fid  # no registration
        futures = [ex.submit_to_registered_function(fid, (i, 2), {"offset": 1})
                   for i in range(3)]
        source_fid = ex.register_source_code(
            "import statistics\n\ndef stats(xs):\n    return statistics.mean(xs)\n",
            function_name="stats")
        mean = ex.submit_to_registered_function(source_fid, ([1, 2, 3, 4],))
        assert [f.result(timeout=60) for f in futures] == [1, 3, 5]
        assert mean.result(timeout=60) == 2.5
        with pytest.raises(TypeError):
            ex.submit_to_registered_function(fid, "not a tuple")
    assert client.get_function(source_fid)["function_name"] == "stats"


def test_client_register_function_as_globus_documents(fed_stack):
    client = fed_stack.client()
    fid = client.register_function(platform_func)
    assert client.get_function(fid)["description"] == "Get platform information about this system."
    fid = client.register_function(platform_func, "this has priority over docstrings")
    assert client.get_function(fid)["description"] == "this has priority over docstrings"
    assert client.get_function(client.register_function(platform_func, public=True))["public"]
    group = str(uuid.uuid4())
    shared = client.register_function(platform_func, group=group)
    assert client.get_function(shared)["shared_with_groups"] == [group]
    task_id = client.run(endpoint_id=fed_stack.endpoint_id, function_id=fid)
    result = wait_for(lambda: client.get_batch_result([task_id])[task_id].get("result"),
                      what="the task's result")
    assert result.startswith("Linux")


def test_session_task_group_batch_and_reload(fed_stack):
    client = fed_stack.client()
    fid = client.register_function(noisy_multiply)
    batch = client.create_batch()
    for val in range(4):
        batch.add(fid, args=(val + 3, val), kwargs={"noise": val // 5, "offset": val + 1})
    reply = client.batch_run(fed_stack.endpoint_id, batch)
    assert reply["task_group_id"] == client.session_task_group_id
    task_ids = [t for ids in reply["tasks"].values() for t in ids]
    with Executor(fed_stack.endpoint_id, client=client,
                  task_group_id=client.session_task_group_id) as ex:
        values = {f.task_id: f.result(timeout=60) for f in ex.reload_tasks()}
    assert [values[t] for t in task_ids] == [(v + 3) * v + v + 1 for v in range(4)]
    assert all(not s["pending"] for s in client.get_batch_result(task_ids).values())


def test_hardware_details(fed_stack):
    client = fed_stack.client()
    with Executor(fed_stack.endpoint_id, client=client) as ex:
        report = ex.get_worker_hardware_details()
    assert "== python ==" in report and "cpu count:" in report
    task_id = client.get_worker_hardware_details(fed_stack.endpoint_id)
    text = wait_for(lambda: client.get_batch_result([task_id])[task_id].get("result"),
                    what="the hardware report")
    assert "fedcompute endpoint worker" in text


def test_endpoint_metadata_allowed_functions_and_version_check(fed_stack):
    client = fed_stack.client()
    meta = client.get_endpoint_metadata(fed_stack.endpoint_id)
    assert meta["uuid"] == fed_stack.endpoint_id and meta["name"] == "local"
    assert meta["python_version"] and meta["details"]["workers"] >= 1
    assert client.get_allowed_functions(fed_stack.endpoint_id) == {
        "endpoint_id": fed_stack.endpoint_id, "restricted": False, "functions": []}
    fid = client.register_function(noisy_multiply)
    restricted = client.register_endpoint("globus-names-allow", allowed_functions=[fid])
    try:
        assert client.get_allowed_functions(restricted["endpoint_id"]) == {
            "endpoint_id": restricted["endpoint_id"], "restricted": True, "functions": [fid]}
    finally:
        client.delete_endpoint(restricted["endpoint_id"])
    client.version_check()
    Client(fed_stack.service_url, fed_stack.token, do_version_check=True).close()
    assert issubclass(VersionMismatch, Exception)


def test_get_endpoints_by_role(fed_stack):
    alice = fed_stack.client()
    bob = fed_stack.client(fed_stack.create_user("bob-globus-names"))
    shared = alice.register_endpoint("globus-names-shared", shared_with=["bob-globus-names"])
    own = bob.register_endpoint("globus-names-bobs")
    try:
        every = {e["uuid"] for e in bob.get_endpoints()}
        assert {shared["endpoint_id"], own["endpoint_id"]} <= every
        assert {e["uuid"] for e in bob.get_endpoints(role="any")} == every
        assert {e["uuid"] for e in bob.get_endpoints(role="owner")} == {own["endpoint_id"]}
    finally:
        alice.delete_endpoint(shared["endpoint_id"])
        bob.delete_endpoint(own["endpoint_id"])
