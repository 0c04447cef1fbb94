"""The fast lane's executor processes, driven directly (no Dask, no service): tasks run and
come back, a walltime or a cancellation stops a task at once (even in ``time.sleep``), a task
that kills its process fails alone, and only the agent holding the secret may connect."""

from __future__ import annotations

import os
import socket
import time
import uuid

import pytest
from fedcompute import serialize
from fedcompute.endpoint.lane import server as lane_server
from fedcompute.endpoint.lane.frames import SocketFrames
from fedcompute.endpoint.lane.server import LaneServer
from fedcompute.endpoint.records import LeasedTask, TaskResult

pytestmark = pytest.mark.timeout(120)


def square(x):
    return x * x


def nap(seconds):
    time.sleep(seconds)
    return "woke"


def die():
    os._exit(3)


def mark(path):
    with open(path, "w") as f:
        f.write("ran")
    return path


@pytest.fixture
def lane():
    server = LaneServer("127.0.0.1", "s3cret", executors=2, max_result_size=1 << 20)
    yield server
    server.close()


def _connect(lane: LaneServer, secret: str = "s3cret") -> SocketFrames:
    host, _, port = lane.address.rpartition(":")
    frames = SocketFrames(socket.create_connection((host, int(port)), timeout=30))
    frames.send({"op": "hello", "secret": secret})
    return frames


def _task(fn, *args, walltime=None) -> tuple[LeasedTask, dict]:
    body = serialize.serialize_function(fn)
    fid = serialize.function_digest(body)[:32]
    fid = str(uuid.UUID(fid))
    task = LeasedTask(str(uuid.uuid4()), fid, serialize.serialize_args(args, {}),
                      walltime=walltime)
    return task, {fid: body}


def _results(frames: SocketFrames, n: int, timeout: float = 60) -> dict[str, TaskResult]:
    out: dict[str, TaskResult] = {}
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        frame = frames.recv()
        assert frame is not None, "the lane hung up"
        for r in frame.get("results") or ():
            out[r["task_id"]] = TaskResult.from_wire(r)
    return out


def _run(frames, *tasks_and_bodies):
    bodies = {}
    for _, b in tasks_and_bodies:
        bodies.update(b)
    frames.send({"op": "run", "tasks": [t.lane_wire() for t, _ in tasks_and_bodies],
                 "bodies": bodies})


def test_tasks_run_and_results_come_back(lane):
    frames = _connect(lane)
    assert frames.recv()["op"] == "welcome"
    tasks = [_task(square, i) for i in range(50)]
    _run(frames, *tasks)
    results = _results(frames, 50)
    assert {serialize.loads(results[t.task_id].result) for t, _ in tasks} == \
        {i * i for i in range(50)}


def test_walltime_and_cancel_stop_a_sleeping_task_at_once(lane):
    frames = _connect(lane)
    frames.recv()
    slow, b1 = _task(nap, 60, walltime=0.5)
    doomed, b2 = _task(nap, 60)
    _run(frames, (slow, b1), (doomed, b2))
    # Timed from when the doomed task runs (a loaded machine may take seconds to start the
    # executor processes); the slow one may have hit its walltime by then.
    results: dict[str, TaskResult] = {}
    running: set[str] = set()
    while doomed.task_id not in running:
        frame = frames.recv()
        running.update(t for t, _ in frame.get("started") or ())
        results.update((r["task_id"], TaskResult.from_wire(r)) for r in frame.get("results") or ())
    time.sleep(0.3)
    started = time.monotonic()
    frames.send({"op": "stop", "task_ids": [doomed.task_id], "why": "cancel"})
    results.update(_results(frames, 2 - len(results)))
    assert time.monotonic() - started < 3
    assert results[slow.task_id].status == "failed"
    assert "WalltimeExceeded" in results[slow.task_id].exception["type"]
    assert results[doomed.task_id].status == "cancelled"
    # the executors are free again at once
    again, b3 = _task(square, 7)
    _run(frames, (again, b3))
    assert serialize.loads(_results(frames, 1)[again.task_id].result) == 49


def test_a_task_that_kills_its_process_fails_alone(lane):
    frames = _connect(lane)
    frames.recv()
    culprit, b1 = _task(die)
    bystanders = [_task(square, i) for i in range(10)]
    _run(frames, (culprit, b1), *bystanders)
    results = _results(frames, 11)
    assert "WorkerLost" in results[culprit.task_id].exception["type"]
    assert all(results[t.task_id].status == "success" for t, _ in bystanders)


def _one_executor(batch: int = lane_server.BATCH):
    """A lane with one executor that has run a few quick tasks (with batches allowed, its
    batches have grown to their most)."""
    server = LaneServer("127.0.0.1", "s3cret", executors=1, max_result_size=1 << 20,
                        batch=batch)
    frames = _connect(server)
    frames.recv()
    for i in range(6):
        _run(frames, _task(square, i))
        _results(frames, 1)
    assert server.executors[0].size == batch
    return server, frames


def test_quick_tasks_share_a_batch_and_a_stop_skips_one_not_started(tmp_path):
    server, frames = _one_executor()
    try:
        head = _task(nap, 1.5)
        marks = [_task(mark, str(tmp_path / f"m{i}")) for i in range(3)]
        _run(frames, head, *marks)
        time.sleep(0.5)
        executor = server.executors[0]
        assert [t.task_id for t in executor.batch] == [t.task_id for t, _ in [head, *marks]]
        frames.send({"op": "stop", "task_ids": [marks[1][0].task_id], "why": "cancel"})
        results = _results(frames, 4)
        assert serialize.loads(results[head[0].task_id].result) == "woke"  # not stopped
        assert results[marks[1][0].task_id].status == "cancelled"
        assert not (tmp_path / "m1").exists()  # it never ran
        for t in (marks[0], marks[2]):
            assert results[t[0].task_id].status == "success"
        assert (tmp_path / "m0").exists() and (tmp_path / "m2").exists()
        assert executor.size == 1  # that batch was slow: the next one is a single task
    finally:
        server.close()


def test_cancelling_the_running_task_of_a_batch_stops_only_it():
    server, frames = _one_executor()
    try:
        head = _task(nap, 60)
        rest = [_task(square, i) for i in range(3)]
        _run(frames, head, *rest)
        time.sleep(0.5)
        started = time.monotonic()
        frames.send({"op": "stop", "task_ids": [head[0].task_id], "why": "cancel"})
        results = _results(frames, 4)
        assert time.monotonic() - started < 3
        assert results[head[0].task_id].status == "cancelled"
        assert [serialize.loads(results[t.task_id].result) for t, _ in rest] == [0, 1, 4]
    finally:
        server.close()


def test_a_batch_whose_process_dies_reruns_the_tasks_it_did_not_reach():
    server, frames = _one_executor()
    try:
        first = _task(square, 3)
        culprit = _task(die)
        rest = [_task(square, i) for i in range(3)]
        _run(frames, first, culprit, *rest)
        results = _results(frames, 5)
        assert serialize.loads(results[first[0].task_id].result) == 9
        assert "WorkerLost" in results[culprit[0].task_id].exception["type"]
        assert [serialize.loads(results[t.task_id].result) for t, _ in rest] == [0, 1, 4]
    finally:
        server.close()


def test_without_batches_a_quick_task_never_waits_behind_a_long_one():
    """The default lane sends one task at a time: a quick task queued after a long one stays
    in the lane's queue (the agent may steal it), never in the long one's batch."""
    server, frames = _one_executor(batch=1)
    try:
        long, short = _task(nap, 60), _task(square, 2)
        _run(frames, long, short)
        time.sleep(0.5)
        assert [t.task_id for t in server.executors[0].batch] == [long[0].task_id]
        frames.send({"op": "steal", "n": 1})
        while (frame := frames.recv()).get("returned") is None:
            pass
        assert frame["returned"] == [short[0].task_id]
    finally:
        server.close()


def test_the_wrong_secret_is_refused(lane):
    frames = _connect(lane, secret="guess")
    assert frames.recv() is None


def test_steal_gives_back_tasks_not_started_and_only_those():
    server = LaneServer("127.0.0.1", "s3cret", executors=1, max_result_size=1 << 20)
    try:
        frames = _connect(server)
        frames.recv()
        tasks = [_task(nap, 30)] + [_task(square, i) for i in range(4)]
        _run(frames, *tasks)
        time.sleep(1.0)  # the long one has started; the four wait behind it
        frames.send({"op": "steal", "n": 3})
        returned = None
        while returned is None:
            frame = frames.recv()
            returned = frame.get("returned")
        assert returned == [t.task_id for t, _ in tasks[2:]]  # the last three, in order
        frames.send({"op": "stop", "task_ids": [tasks[0][0].task_id], "why": "cancel"})
        results = _results(frames, 2)
        assert results[tasks[0][0].task_id].status == "cancelled"
        assert serialize.loads(results[tasks[1][0].task_id].result) == 0
        frames.send({"op": "steal", "n": 5})  # nothing left to give: answered all the same
        while (frame := frames.recv()).get("returned") is None:
            pass
        assert frame["returned"] == []
    finally:
        server.close()
