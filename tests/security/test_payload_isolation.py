"""The service never unpickles user payloads. A payload whose unpickling runs code (it writes a
marker file naming the process) goes through registration, submission (also the RQ fan-out of
a big batch), leasing, result storage and retrieval untouched and byte for byte, and no marker
appears. Then, as a separate check that the payload is live, an endpoint runs it: the marker
appears, written by an endpoint process."""

from __future__ import annotations

import pickle
import uuid

import pytest
from fedcompute import serialize
from fedcompute.protocol import MSGPACK, unpackb

from tests.reliability.agent_api import FakeAgent
from tests.reliability.helpers import process_tree, wait_for

pytestmark = pytest.mark.timeout(300)


class Bomb:
    """Unpickling this runs code: it writes ``unpickled-<pid>`` into ``directory``."""

    def __init__(self, directory: str):
        self.directory = directory

    def __reduce__(self):
        code = ("import os, sys\n"
                f"path = os.path.join({self.directory!r}, 'unpickled-%d' % os.getpid())\n"
                "open(path, 'w').write(' '.join(sys.argv))\n")
        return (exec, (code,))


def bomb(directory, what: object = ()) -> bytes:
    """A payload with fedcompute's header that runs the bomb when loaded."""
    return serialize._HEADER + pickle.dumps((Bomb(str(directory)), what))


def ran(*args, **kwargs):
    return "ran"


def _raw_record(sec, task_id: str) -> dict:
    """A task record as the service sends it (msgpack), without the SDK decoding anything."""
    response = sec.alice()._http.get(f"/tasks/{task_id}", headers={"Accept": MSGPACK})
    assert response.status_code == 200
    return unpackb(response.content)


def test_service_passes_hostile_payloads_through_untouched(sec, tmp_path):
    alice = sec.alice()
    markers = tmp_path / "markers"
    markers.mkdir()
    inert = alice.register_endpoint("inert")  # no agent: the test plays it
    body = bomb(markers)
    function = alice.request("POST", "/functions", body={
        "function_name": "hostile", "function_body": body})["function_id"]
    assert alice.get_function(function)["function_name"] == "hostile"
    payloads = {str(uuid.uuid4()): bomb(markers, i) for i in range(3)}
    alice.submit_tasks(inert["endpoint_id"], [
        {"task_id": tid, "function_id": function, "payload": p} for tid, p in payloads.items()])
    # A batch big enough for the RQ worker to write it (fan-out) carries the bomb too.
    big = [{"task_id": str(uuid.uuid4()), "function_id": function, "payload": body}
           for _ in range(5001)]
    group = alice.submit_tasks(inert["endpoint_id"], big)["task_group_id"]
    wait_for(lambda: len(alice.get_task_group(group)) == 5001, 120, "the RQ fan-out")
    # The agent gets function body and payloads byte for byte.
    agent = FakeAgent(sec.url, inert["credential"])
    agent.connect()
    leased = {}
    while len(leased) < len(payloads) + len(big):
        lease = agent.lease(max_tasks=5000, wait=1)
        assert lease["functions"] in ({}, {function: body})
        leased.update({t["task_id"]: t["payload"] for t in lease["tasks"]})
    assert all(leased[tid] == payload for tid, payload in payloads.items())
    assert all(leased[t["task_id"]] == body for t in big)
    # Results and exceptions that would run code when loaded are stored and returned as is.
    ok_id, failed_id, _ = payloads
    result = bomb(markers, "result")
    envelope = {"type": "builtins.ValueError", "message": "m", "traceback": "t",
                "pickle": bomb(markers, "exception")}
    assert agent.results([
        {"task_id": ok_id, "status": "success", "result": result},
        {"task_id": failed_id, "status": "failed", "exception": envelope}]) == {
        "stored": 2, "duplicates": 0}
    assert _raw_record(sec, ok_id)["result"] == result
    assert _raw_record(sec, failed_id)["exception"] == envelope
    page = alice.results_page(_raw_record(sec, ok_id)["task_group_id"], "0", wait=0)
    assert {r["task_id"]: r.get("result") for r in page["results"]}[ok_id] == result
    # Let maintenance run over all of it too, then: nobody unpickled anything.
    agent.close()
    assert not list(markers.iterdir()), "the service unpickled a user payload"


def test_the_hostile_payload_is_live_at_the_endpoint(sec, tmp_path):
    """The separate check: the same kind of payload does run code where it is meant to be
    loaded, the endpoint, so the test above would have seen the service load it."""
    alice = sec.alice()
    markers = tmp_path / "markers"
    markers.mkdir()
    fid = alice.register_function(ran)
    task_id = str(uuid.uuid4())
    alice.submit_tasks(sec.private_id, [{"task_id": task_id, "function_id": fid,
                                         "payload": serialize._HEADER + pickle.dumps(
                                             ((Bomb(str(markers)),), {}))}])
    wait_for(lambda: not alice.get_task(task_id)["pending"], 120, "the task")
    assert alice.get_result(task_id) == "ran"
    found = list(markers.iterdir())
    assert len(found) == 1, "the endpoint loaded the payload once"
    pid = int(found[0].name.split("-")[1])
    endpoint_pids = {p.pid for p in process_tree(sec.stack.endpoints["local"].pid)}
    service_pids = {p.pid for p in process_tree(sec.stack.service.pid)}
    assert pid in endpoint_pids and pid not in service_pids
