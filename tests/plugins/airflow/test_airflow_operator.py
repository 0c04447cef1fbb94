"""RemoteFunctionOperator / RemoteShellOperator run by real Airflow (``dag.test()``, which runs
deferred tasks' triggers inline) against the real fedcompute stack (service, Valkey, endpoint
with Dask). Task logs go to the console in ``dag.test()``, so they are read with ``capfd``."""

from __future__ import annotations

import datetime as dt
import re
import time
from pathlib import Path

from airflow.sdk import DAG
from fedcompute.plugins.airflow import RemoteFunctionOperator, RemoteShellOperator

START = dt.datetime(2024, 1, 1)


def double(x):
    print("doubling", x)
    return 2 * x


def describe(x, label, run):
    return f"{label}:{x}:{type(x).__name__}:{run.startswith('manual__')}"


def _inner_check(value):
    if value > 10:
        raise ValueError(f"bad input {value}")


def fails(value):
    _inner_check(value)


def sleeps(seconds):
    # Short sleeps, so that the endpoint's walltime stop (an exception raised in the task's
    # thread) takes effect at once instead of ending the worker process.
    for _ in range(int(seconds * 10)):
        time.sleep(0.1)
    return "woke up"


def flaky(marker):
    """Fail the first time, succeed the second: counts its runs in a file."""
    path = Path(marker)
    with path.open("a") as f:
        f.write("run\n")
    runs = len(path.read_text().splitlines())
    if runs < 2:
        raise RuntimeError(f"transient failure on run {runs}")
    return runs


def ti_state(dr, task_id):
    return dr.get_task_instance(task_id).state


def xcom(dr, task_id, key="return_value"):
    return dr.get_task_instance(task_id).xcom_pull(task_ids=task_id, key=key)


def submitted_ids(log: str) -> list[str]:
    return re.findall(r"Submitted remote task ([0-9a-f-]{36})", log)


def test_chain_through_xcom_both_modes(run_dag, capfd):
    """a (waits in the worker) -> b (deferred, trigger run inline) -> c (worker)."""
    with DAG("fc_chain", schedule=None, start_date=START) as dag:
        a = RemoteFunctionOperator(task_id="a", python_callable=double, op_args=[21],
                                   deferrable=False)
        b = RemoteFunctionOperator(task_id="b", python_callable=double, op_args=[a.output],
                                   deferrable=True, poll_interval=2)
        c = RemoteFunctionOperator(task_id="c", python_callable=double,
                                   op_kwargs={"x": b.output})
        a >> b >> c
    dr = run_dag(dag)
    log = capfd.readouterr().out
    assert dr.state == "success"
    assert [xcom(dr, t) for t in "abc"] == [42, 84, 168]
    ids = [xcom(dr, t, "fedcompute_task_id") for t in "abc"]
    assert len(set(ids)) == 3 and set(ids) <= set(submitted_ids(log))
    # b was deferred (and resumed by its trigger); a and c waited in the worker.
    assert log.count("Pausing task as DEFERRED") == 1
    assert "waiting up to 86400s in the triggerer" in log
    for value in (21, 42, 84):  # remote stdout lands in the task log
        assert f"doubling {value}" in log


def test_templated_arguments(run_dag, fed_stack, capfd):
    with DAG("fc_templates", schedule=None, start_date=START,
             params={"x": 5, "label": "sample", "endpoint": fed_stack.endpoint_id}) as dag:
        RemoteFunctionOperator(
            task_id="as_text", python_callable=describe, op_args=["{{ params.x * 2 }}"],
            op_kwargs={"label": "{{ params.label }}", "run": "{{ run_id }}"},
            endpoint_id="{{ params.endpoint }}")
    dr = run_dag(dag, run_conf={"label": "from-conf"})  # run conf overrides params
    capfd.readouterr()
    assert dr.state == "success"
    assert xcom(dr, "as_text") == "from-conf:10:str:True"


def test_native_templates(run_dag, capfd):
    with DAG("fc_native", schedule=None, start_date=START, params={"x": 5},
             render_template_as_native_obj=True) as dag:
        RemoteFunctionOperator(task_id="native", python_callable=describe,
                               op_args=["{{ params.x * 2 }}", "n", "{{ run_id }}"],
                               deferrable=True)
    dr = run_dag(dag)
    capfd.readouterr()
    assert xcom(dr, "native") == "n:10:int:True"


def test_remote_failure_fails_task_with_remote_traceback(run_dag, capfd):
    with DAG("fc_failure", schedule=None, start_date=START) as dag:
        RemoteFunctionOperator(task_id="sync", python_callable=fails, op_args=[41],
                               deferrable=False)
        RemoteFunctionOperator(task_id="deferred", python_callable=fails, op_args=[42],
                               deferrable=True)
        RemoteFunctionOperator(task_id="fine", python_callable=fails, op_args=[1])
    dr = run_dag(dag)
    log = capfd.readouterr().out
    assert dr.state == "failed"
    assert ti_state(dr, "sync") == "failed" and ti_state(dr, "deferred") == "failed"
    assert ti_state(dr, "fine") == "success"
    for value in (41, 42):
        assert f"ValueError: bad input {value}" in log
    # The traceback from the endpoint, with the remote frames, is in the log.
    assert log.count("Remote traceback:") >= 2
    assert re.search(r"in fails\n.*\n.*in _inner_check", log)


def test_timeout_fails_task_and_stops_remote_task(run_dag, fed_stack, capfd):
    with DAG("fc_timeout", schedule=None, start_date=START) as dag:
        RemoteFunctionOperator(task_id="sync", python_callable=sleeps, op_args=[60],
                               timeout=3, deferrable=False, poll_interval=1)
        RemoteFunctionOperator(task_id="deferred", python_callable=sleeps, op_args=[60],
                               timeout=dt.timedelta(seconds=3), deferrable=True,
                               poll_interval=1)
    dr = run_dag(dag)
    log = capfd.readouterr().out
    assert dr.state == "failed"
    assert ti_state(dr, "sync") == "failed" and ti_state(dr, "deferred") == "failed"
    # Each task fails on its timeout: the local wait's, or (under load, when the remote task
    # started at once) the same timeout enforced remotely as its walltime.
    assert log.count("did not finish within 3s") + log.count("past its walltime of 3") >= 2
    # The remote tasks are stopped too: cancelled if still queued, else by their walltime.
    client = fed_stack.client()
    for task_id in submitted_ids(log):
        deadline = time.monotonic() + 60
        while (info := client.get_task(task_id))["pending"] and time.monotonic() < deadline:
            time.sleep(0.5)
        assert info["status"] in ("cancelled", "failed")
        if info["status"] == "failed":
            assert type(info["exception"]).__name__ == "WalltimeExceeded"


def test_execution_timeout_bounds_the_wait(run_dag, capfd):
    with DAG("fc_exec_timeout", schedule=None, start_date=START) as dag:
        RemoteFunctionOperator(task_id="slow", python_callable=sleeps, op_args=[60],
                               execution_timeout=dt.timedelta(seconds=3), poll_interval=1)
    dr = run_dag(dag)
    log = capfd.readouterr().out
    assert ti_state(dr, "slow") == "failed"
    assert "AirflowTaskTimeout" in log


def test_shell_operator(run_dag, capfd):
    with DAG("fc_shell", schedule=None, start_date=START, params={"who": "airflow"}) as dag:
        RemoteShellOperator(task_id="hello",
                            command="echo hello {who} from $FC_PLACE; echo careful >&2",
                            format_kwargs={"who": "{{ params.who }}"},
                            env={"FC_PLACE": "the endpoint"}, deferrable=True)
        RemoteShellOperator(task_id="broken", command="echo partial; echo no such file >&2; "
                                                      "exit 3")
        RemoteShellOperator(task_id="allowed", command="exit 3", ok_exit_codes=(0, 3))
    dr = run_dag(dag)
    log = capfd.readouterr().out
    assert xcom(dr, "hello") == "hello airflow from the endpoint"
    assert "careful" in log
    assert ti_state(dr, "broken") == "failed"
    assert "command exited with code 3: no such file" in log
    assert ti_state(dr, "allowed") == "success"


def test_airflow_retries_resubmit(run_dag, tmp_path, capfd):
    marker = tmp_path / "runs.txt"
    with DAG("fc_retries", schedule=None, start_date=START) as dag:
        RemoteFunctionOperator(task_id="flaky", python_callable=flaky, op_args=[str(marker)],
                               retries=1, retry_delay=dt.timedelta(seconds=0))
    dr = run_dag(dag)
    log = capfd.readouterr().out
    assert dr.state == "success"
    assert xcom(dr, "flaky") == 2
    assert dr.get_task_instance("flaky").try_number == 2
    assert "transient failure on run 1" in log
    ids = submitted_ids(log)
    assert len(ids) == 2 and ids[0] != ids[1]  # a new remote task per attempt
    assert marker.read_text().splitlines() == ["run", "run"]


def test_functions_from_dag_files_travel_by_value(airflow_env):
    """Airflow imports DAG files as ``unusual_prefix_<sha1>_<name>``, a module no endpoint can
    import: the SDK must ship such functions by value."""
    from airflow.dag_processing.dagbag import DagBag
    from fedcompute.plugins.airflow import FederatedComputeHook

    examples = Path(__file__).resolve().parents[3] / "examples" / "airflow"
    bag = DagBag(dag_folder=str(examples), include_examples=False)
    assert not bag.import_errors
    dag = bag.get_dag("fedcompute_example")
    sample = dag.get_task("sample").partial_kwargs["python_callable"]
    estimate = dag.get_task("estimate").python_callable
    assert sample.__module__.startswith("unusual_prefix_")
    hook = FederatedComputeHook()
    results = []
    for fn, args in ((sample, (1, 1000)), (estimate, ([785, 786], 1000))):
        task_id, group = hook.submit(fn, args)
        assert hook.wait(task_id, group, timeout=120)
        info = hook.get_task(task_id)
        assert info["status"] == "success", info.get("exception")
        results.append(info["result"])
    assert results[0] == sample(1, 1000)  # same seed, same darts, computed remotely
    assert results[1] == estimate([785, 786], 1000)
    hook.close()


def ticks_then_tock(pause):
    import time

    for i in range(3):
        print(f"tick {i}", flush=True)
    time.sleep(pause)
    print("tock")
    return "ok"


def _logged_at(log: str, text: str) -> list[float]:
    """When the task log lines holding ``text`` were written (their timestamps), in order."""
    stamps = re.findall(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)[^\n]*" + re.escape(text), log)
    return sorted(dt.datetime.fromisoformat(s).timestamp() for s in stamps)


def test_live_output_reaches_the_task_log_while_the_remote_task_runs(run_dag, capfd):
    with DAG("fc_live", schedule=None, start_date=START) as dag:
        RemoteFunctionOperator(task_id="sync", python_callable=ticks_then_tock, op_args=[4],
                               deferrable=False, poll_interval=1)
        RemoteFunctionOperator(task_id="deferred", python_callable=ticks_then_tock,
                               op_args=[4], deferrable=True, poll_interval=1)
        RemoteFunctionOperator(task_id="quiet", python_callable=ticks_then_tock, op_args=[0],
                               stream_output=False)
    dr = run_dag(dag)
    log = capfd.readouterr().out
    assert dr.state == "success"
    # The streamed tasks (in the worker, and in the triggerer): each tick was in the task
    # log seconds before the remote task printed its last line.
    ticks = _logged_at(log, "[remote stdout] tick 2")
    tocks = _logged_at(log, "[remote stdout] tock")
    assert len(ticks) == len(tocks) == 2, log[-3000:]
    assert all(tock - tick >= 3 for tick, tock in zip(ticks, tocks, strict=True))
    # Without stream_output the captured output is logged once, at the end.
    assert "tick 0\ntick 1\ntick 2\ntock" in log
