"""End to end through the real stack: SDK -> service -> endpoint (Dask) -> results."""

from __future__ import annotations

import pytest
from fedcompute import Executor, ShellFunction, ShellResult, TaskExecutionFailed


def add(a, b):
    return a + b


class CustomError(Exception):
    pass


def raise_custom(msg):
    raise CustomError(msg)


def test_hello_world(fed_stack):
    with Executor(fed_stack.endpoint_id, client=fed_stack.client()) as ex:
        future = ex.submit(add, 1, 2)
        assert future.task_id
        assert future.result(timeout=60) == 3


def test_map_10000(fed_stack):
    with Executor(fed_stack.endpoint_id, client=fed_stack.client()) as ex:
        results = list(ex.map(add, range(10_000), range(10_000), timeout=300))
    assert results == [2 * i for i in range(10_000)]


def test_remote_exception_with_traceback(fed_stack):
    with Executor(fed_stack.endpoint_id, client=fed_stack.client()) as ex:
        future = ex.submit(raise_custom, "the message")
        with pytest.raises(CustomError, match="the message") as info:
            future.result(timeout=60)
    assert "raise_custom" in info.value.remote_traceback
    assert "Remote traceback" in str(info.value.__cause__)


def test_unpicklable_exception_becomes_task_execution_failed(fed_stack):
    def bad():
        class Local(Exception):
            def __reduce__(self):
                raise TypeError("no pickling")
        raise Local("local failure")

    with Executor(fed_stack.endpoint_id, client=fed_stack.client()) as ex:
        with pytest.raises(TaskExecutionFailed, match="local failure"):
            ex.submit(bad).result(timeout=60)


def test_shell_function(fed_stack):
    with Executor(fed_stack.endpoint_id, client=fed_stack.client()) as ex:
        result = ex.submit(ShellFunction("echo hello {name}; echo err >&2; exit 3"),
                           name="world").result(timeout=60)
    assert isinstance(result, ShellResult)
    assert result.returncode == 3
    assert result.stdout.strip() == "hello world"
    assert result.stderr.strip() == "err"


def test_client_api_run_and_get_task(fed_stack):
    client = fed_stack.client()
    fid = client.register_function(add)
    assert client.register_function(add) == fid  # same body -> same id
    task_id = client.run(2, 3, endpoint_id=fed_stack.endpoint_id, function_id=fid)
    import time

    deadline = time.time() + 60
    while (info := client.get_task(task_id))["pending"] and time.time() < deadline:
        time.sleep(0.2)
    assert info["status"] == "success" and info["result"] == 5
    stamps = info["timestamps"]
    assert stamps["received"] <= stamps["running"] <= stamps["success"]
    assert client.get_result(task_id) == 5
    batch = client.create_batch()
    ids = [batch.add(fid, (i, i)) for i in range(5)]
    client.batch_run(fed_stack.endpoint_id, batch)
    deadline = time.time() + 60
    while time.time() < deadline:
        results = client.get_batch_result(ids)
        if not any(r["pending"] for r in results.values()):
            break
        time.sleep(0.2)
    assert [results[i]["result"] for i in ids] == [0, 2, 4, 6, 8]
    status = client.get_endpoint_status(fed_stack.endpoint_id)
    assert status["status"] == "online" and status["details"]["workers"] == 2
