"""Service features end to end: fan-out of big batches, cancel, sharing, allowed functions,
states and status."""

from __future__ import annotations

import time
import uuid

import pytest
from fedcompute import Executor, TaskCancelled, serialize
from fedcompute.errors import ForbiddenError, NotFoundError


def square(x):
    return x * x


def wait_done(client, task_ids, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        records = client.get_task_records(task_ids)
        if all(r and r["completed"] for r in records.values()):
            return records
        time.sleep(0.3)
    raise AssertionError("tasks did not finish")


def test_big_batch_is_fanned_out_by_rq(fed_stack):
    client = fed_stack.client()
    fid = client.register_function(square)
    tasks = [{"task_id": str(uuid.uuid4()), "function_id": fid,
              "payload": serialize.serialize_args((i,), {})} for i in range(6000)]
    reply = client.submit_tasks(fed_stack.endpoint_id, tasks)
    assert reply["task_ids"] == [t["task_id"] for t in tasks]
    records = wait_done(client, reply["task_ids"], timeout=300)
    values = [serialize.loads(records[t["task_id"]]["result"]) for t in tasks]
    assert values == [i * i for i in range(6000)]
    assert len(client.get_task_group(reply["task_group_id"])) == 6000


def test_resubmitting_the_same_batch_is_idempotent(fed_stack):
    client = fed_stack.client()
    fid = client.register_function(square)
    tasks = [{"task_id": str(uuid.uuid4()), "function_id": fid,
              "payload": serialize.serialize_args((7,), {})}]
    first = client.submit_tasks(fed_stack.endpoint_id, tasks)
    again = client.submit_tasks(fed_stack.endpoint_id, tasks, first["task_group_id"])
    assert again["duplicates"] == 1
    wait_done(client, first["task_ids"])
    assert client.get_task_group(first["task_group_id"]) == first["task_ids"]


def test_cancel_before_start(fed_stack):
    client = fed_stack.client()
    parked = client.register_endpoint("parked")["endpoint_id"]  # no agent: tasks wait
    ex = Executor(parked, client=client)
    future = ex.submit(square, 3)
    deadline = time.time() + 30
    while time.time() < deadline:  # the batch goes out from a background thread
        try:
            if client.get_task(future.task_id)["status"] == "waiting-for-endpoint":
                break
        except NotFoundError:
            time.sleep(0.05)
    assert future.cancel()
    assert future.cancelled()
    assert client.get_task(future.task_id)["status"] == "cancelled"
    with pytest.raises(TaskCancelled):
        client.get_result(future.task_id)
    ex.shutdown(wait=False)


def test_sharing_and_allowed_functions(fed_stack):
    owner = fed_stack.client()
    bob = fed_stack.client(fed_stack.create_user("bob-features"))
    fid = owner.register_function(square)
    with pytest.raises(NotFoundError):
        bob.get_function(fid)
    with pytest.raises(NotFoundError):
        bob.get_endpoint_status(fed_stack.endpoint_id)
    owner.share_function(fid, shared_with=["bob-features"])
    assert bob.get_function(fid)["function_name"] == "square"
    owner.update_endpoint(fed_stack.endpoint_id, shared_with=["bob-features"])
    try:
        assert bob.run(4, endpoint_id=fed_stack.endpoint_id, function_id=fid)
        bob_fid = bob.register_function(lambda x: x)
        owner.update_endpoint(fed_stack.endpoint_id, allowed_functions=[fid])
        with pytest.raises(ForbiddenError, match="does not allow"):
            bob.run(1, endpoint_id=fed_stack.endpoint_id, function_id=bob_fid)
    finally:
        owner.update_endpoint(fed_stack.endpoint_id, shared_with=[], allowed_functions=None)


def test_task_states_have_timestamps_in_order(fed_stack):
    client = fed_stack.client()
    with Executor(fed_stack.endpoint_id, client=client) as ex:
        future = ex.submit(square, 5)
        assert future.result(timeout=60) == 25
    info = client.get_task(future.task_id)
    order = ["received", "waiting-for-endpoint", "running", "success"]
    stamps = [info["timestamps"][s] for s in order]
    assert stamps == sorted(stamps)


def test_endpoint_listing_and_status(fed_stack):
    client = fed_stack.client()
    listed = {e["endpoint_id"]: e for e in client.get_endpoints()}
    assert listed[fed_stack.endpoint_id]["status"] == "online"
    status = client.get_endpoint_status(fed_stack.endpoint_id)
    assert {"queued", "leased", "details"} <= set(status)
    assert status["details"]["versions"]["python"]


def test_capture_output(fed_stack):
    def chatty():
        import logging
        import sys

        print("to stdout")
        print("to stderr", file=sys.stderr)
        logging.getLogger("science").warning("a log line")
        return 1

    with Executor(fed_stack.endpoint_id, client=fed_stack.client(), capture_output=True) as ex:
        future = ex.submit(chatty)
        assert future.result(timeout=60) == 1
    assert "to stdout" in future.stdout
    assert "to stderr" in future.stderr and "a log line" in future.stderr
