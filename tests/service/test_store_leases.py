"""The lease protocol, as the store implements it: each test is one rule of it.

An endpoint's queue is a Redis stream with one consumer group; each agent session is a
consumer. A task is leased to one session at a time, acknowledged only when its result is
stored, and taken back from sessions that are replaced or go silent.
"""

from __future__ import annotations

import time

import pytest
from fedcompute.protocol import ExceptionEnvelope, TaskResult
from fedcompute.service.store import StaleSession, keys

from .conftest import tasks


def _submit(store, endpoint, n=3, group="00000000-0000-4000-8000-000000000001"):
    batch = tasks(n)
    assert store.submit("alice", endpoint, group, batch) == 0
    return [t.task_id for t in batch], group


def _states(store, ids):
    return [r["status"] for r in store.get_tasks(ids)]


def _ok(task_id: str) -> TaskResult:
    return TaskResult(task_id=task_id, status="success", result=b"42")


def test_submitted_tasks_wait_for_the_endpoint_with_timestamps(store, endpoint):
    ids, group = _submit(store, endpoint)
    records = store.get_tasks(ids)
    assert [r["status"] for r in records] == ["waiting-for-endpoint"] * 3
    assert all({"received", "waiting-for-endpoint"} <= set(r["timestamps"]) for r in records)
    assert store.group_task_ids(group) == ids
    assert store.endpoint_counts(endpoint) == (3, 0)


def test_a_resent_batch_is_counted_as_duplicates_and_changes_nothing(store, endpoint):
    batch = tasks(3)
    group = "00000000-0000-4000-8000-000000000002"
    store.submit("alice", endpoint, group, batch)
    assert store.submit("alice", endpoint, group, batch) == 3
    assert store.endpoint_counts(endpoint) == (3, 0)
    assert len(store.group_task_ids(group)) == 3


def test_another_users_group_or_task_id_is_refused_whole(store, endpoint):
    batch = tasks(2)
    store.submit("alice", endpoint, "00000000-0000-4000-8000-000000000003", batch)
    with pytest.raises(PermissionError, match="task group belongs to another user"):
        store.submit("bob", endpoint, "00000000-0000-4000-8000-000000000003", tasks(1))
    with pytest.raises(PermissionError, match="is taken"):
        store.submit("bob", endpoint, "00000000-0000-4000-8000-000000000004", batch[:1])
    assert store.endpoint_counts(endpoint) == (2, 0)


def test_a_lease_hands_each_task_to_one_session_and_marks_it_leased(store, endpoint):
    ids, _ = _submit(store, endpoint)
    store.connect_agent(endpoint, "session-a", {})
    leased = store.lease(endpoint, "session-a", 10, 0)
    assert [t["task_id"] for t in leased] == ids
    assert leased[0]["payload"] == b"args 0" and leased[0]["attempt"] == 0
    assert _states(store, ids) == ["leased"] * 3
    assert store.lease(endpoint, "session-a", 10, 0) == []  # nothing is delivered twice
    assert store.endpoint_counts(endpoint) == (0, 3)


def test_a_long_poll_returns_as_soon_as_a_task_arrives(store, endpoint):
    import threading

    store.connect_agent(endpoint, "session-a", {})
    got = []
    poll = threading.Thread(target=lambda: got.extend(store.lease(endpoint, "session-a", 10, 5)))
    started = time.monotonic()
    poll.start()
    time.sleep(0.2)
    ids, _ = _submit(store, endpoint, 1)
    poll.join()
    assert [t["task_id"] for t in got] == ids
    assert time.monotonic() - started < 3


def test_a_stored_result_ends_the_lease_and_reaches_the_result_stream(store, endpoint):
    ids, group = _submit(store, endpoint, 2)
    store.connect_agent(endpoint, "session-a", {})
    store.lease(endpoint, "session-a", 10, 0)
    assert store.store_results(endpoint, [_ok(ids[0])]) == (1, 0)
    assert store.endpoint_counts(endpoint) == (0, 1)
    record = store.get_tasks(ids[:1])[0]
    assert record["status"] == "success" and record["result"] == b"42"
    assert {"success", "completed"} <= set(record["timestamps"])
    cursor, page = store.read_results(group, "0", 0, 100)
    assert [r["task_id"] for r in page] == ids[:1]
    # a task finished twice (it was redelivered) is stored once
    assert store.store_results(endpoint, [_ok(ids[0])]) == (0, 1)
    assert store.read_results(group, cursor, 0, 100) == (cursor, [])


def test_a_failure_keeps_its_exception_envelope(store, endpoint):
    ids, _ = _submit(store, endpoint, 1)
    store.connect_agent(endpoint, "session-a", {})
    store.lease(endpoint, "session-a", 10, 0)
    failure = TaskResult(task_id=ids[0], status="failed", stderr="boom\n",
                         exception=ExceptionEnvelope(type="ValueError", message="bad"))
    assert store.store_results(endpoint, [failure]) == (1, 0)
    record = store.get_tasks(ids)[0]
    assert record["status"] == "failed"
    assert record["exception"]["type"] == "ValueError" and record["stderr"] == "boom\n"


def test_results_from_another_endpoint_are_not_stored(store, endpoint):
    ids, _ = _submit(store, endpoint, 1)
    store.connect_agent(endpoint, "session-a", {})
    store.lease(endpoint, "session-a", 10, 0)
    assert store.store_results("00000000-0000-4000-8000-00000000dead", [_ok(ids[0])]) == (0, 1)
    assert _states(store, ids) == ["leased"]


def test_a_new_session_takes_back_its_predecessors_leases_counting_an_attempt(store, endpoint):
    ids, _ = _submit(store, endpoint)
    store.connect_agent(endpoint, "session-a", {})
    store.lease(endpoint, "session-a", 10, 0)
    assert store.connect_agent(endpoint, "session-b", {}) == 3
    assert _states(store, ids) == ["waiting-for-endpoint"] * 3
    leased = store.lease(endpoint, "session-b", 10, 0)
    assert sorted(t["task_id"] for t in leased) == sorted(ids)
    assert {t["attempt"] for t in leased} == {1}
    with pytest.raises(StaleSession):  # the replaced session learns it at its next request
        store.lease(endpoint, "session-a", 10, 0)


def test_a_task_that_loses_its_endpoint_max_attempts_times_fails(store, endpoint):
    ids, group = _submit(store, endpoint, 1)
    for n in range(2):  # settings.max_attempts == 2
        store.connect_agent(endpoint, f"session-{n}", {})
        store.lease(endpoint, f"session-{n}", 10, 0)
    store.connect_agent(endpoint, "session-last", {})
    record = store.get_tasks(ids)[0]
    assert record["status"] == "failed"
    assert record["exception"]["type"] == "fedcompute.errors.EndpointLost"
    assert [r["task_id"] for r in store.read_results(group, "0", 0, 10)[1]] == ids
    assert store.endpoint_counts(endpoint) == (0, 0)


def test_a_lost_lease_reply_is_recovered_by_the_same_session(store, endpoint):
    ids, _ = _submit(store, endpoint)
    store.connect_agent(endpoint, "session-a", {})
    store.lease(endpoint, "session-a", 10, 0)  # the reply never reached the agent
    recovered = store.lease(endpoint, "session-a", 10, 0, recover=True)
    assert [t["task_id"] for t in recovered] == ids


def test_a_stopping_agent_hands_tasks_back_without_an_attempt(store, endpoint):
    ids, _ = _submit(store, endpoint)
    store.connect_agent(endpoint, "session-a", {})
    store.lease(endpoint, "session-a", 10, 0)
    assert store.release(endpoint, "session-a", ids[:1]) == 1
    assert _states(store, ids) == ["waiting-for-endpoint", "leased", "leased"]
    # disconnect: the session ends and everything it still holds goes back
    assert store.release(endpoint, "session-a", [], disconnect=True) == 2
    assert store.get_endpoint(endpoint)["status"] == "offline"
    leased = store.lease(endpoint, "session-a", 10, 0)  # it may come back: a new lease
    assert {t["attempt"] for t in leased} == {0}


def test_a_silent_session_loses_its_leases_to_maintenance(store, endpoint):
    ids, _ = _submit(store, endpoint)
    store.connect_agent(endpoint, "session-a", {})
    store.lease(endpoint, "session-a", 10, 0)
    assert store.maintenance()["reclaimed"] == 0  # it spoke just now
    # silent for a minute (the agent's last sign of life, and the index maintenance reads)
    store.redis.hset(keys.endpoint(endpoint), "last_heartbeat", time.time() - 60)
    store.redis.zadd(keys.endpoint_beats(), {endpoint: time.time() - 60})
    report = store.maintenance()
    assert report["reclaimed"] == 3
    assert _states(store, ids) == ["waiting-for-endpoint"] * 3
    assert store.get_endpoint(endpoint)["session"] == ""
    assert store.maintenance()["endpoints"] == 0  # out of the index until it speaks again
    # if it speaks up again (no other agent connected meanwhile) it resumes its session,
    # and gets the tasks again as new leases, an attempt counted
    leased = store.lease(endpoint, "session-a", 10, 0)
    assert {t["attempt"] for t in leased} == {1} and len(leased) == 3


def test_cancel_stops_only_tasks_no_agent_holds(store, endpoint):
    ids, group = _submit(store, endpoint, 2)
    store.connect_agent(endpoint, "session-a", {})
    store.lease(endpoint, "session-a", 1, 0)
    assert store.cancel(ids[0], b"") == "cancelling"  # the agent stops it
    assert store.cancel(ids[1], b"") == "cancelled"
    assert store.cancel("00000000-0000-4000-8000-00000000beef", b"") == "unknown"
    assert [r["task_id"] for r in store.read_results(group, "0", 0, 10)[1]] == ids[1:]
    assert store.endpoint_counts(endpoint) == (0, 1)


def test_tasks_without_workers_wait_for_nodes_then_run(store, endpoint):
    ids, _ = _submit(store, endpoint, 2)
    store.connect_agent(endpoint, "session-a", {})
    store.lease(endpoint, "session-a", 10, 0)
    assert store.mark(endpoint, "waiting-for-nodes", ids) == 2
    assert _states(store, ids) == ["waiting-for-nodes"] * 2
    assert store.mark(endpoint, "running", ids) == 2
    assert "waiting-for-nodes" in store.get_tasks(ids)[0]["timestamps"]
    assert store.mark("00000000-0000-4000-8000-00000000dead", "waiting-for-nodes", ids) == 0


def test_heartbeats_of_a_replaced_session_are_refused(store, endpoint):
    store.connect_agent(endpoint, "session-a", {})
    assert store.heartbeat(endpoint, "session-a", {"workers": 2})
    assert store.get_endpoint(endpoint)["details"] == {"workers": 2}
    store.connect_agent(endpoint, "session-b", {})
    assert not store.heartbeat(endpoint, "session-a", {})
    with pytest.raises(StaleSession):
        store.touch(endpoint, "session-a")


def test_a_groups_counts_by_state_follow_every_change(store, endpoint):
    ids, group = _submit(store, endpoint, 4)
    assert store.group_counts(group) == {"waiting-for-endpoint": 4}
    store.connect_agent(endpoint, "session-a", {})
    store.lease(endpoint, "session-a", 3, 0)
    store.mark(endpoint, "waiting-for-nodes", ids[:1])
    assert store.group_counts(group) == {"waiting-for-endpoint": 1, "leased": 2,
                                         "waiting-for-nodes": 1}
    store.store_results(endpoint, [_ok(ids[1])])
    store.cancel(ids[3], b"")
    store.connect_agent(endpoint, "session-b", {})  # reclaims the other two
    assert store.group_counts(group) == {"waiting-for-endpoint": 2, "success": 1,
                                         "cancelled": 1}


def test_a_users_groups_and_a_groups_pages(store, endpoint):
    first = tasks(5)
    store.submit("alice", endpoint, "00000000-0000-4000-8000-00000000000a", first)
    store.submit("alice", endpoint, "00000000-0000-4000-8000-00000000000b", tasks(1))
    assert [g for g, _ in store.groups_of("alice")] == [
        "00000000-0000-4000-8000-00000000000b", "00000000-0000-4000-8000-00000000000a"]
    assert store.groups_of("bob") == []
    page = store.group_page("00000000-0000-4000-8000-00000000000a", 2, 2)
    assert [r["task_id"] for r in page] == [t.task_id for t in first[2:4]]
    assert store.group_size("00000000-0000-4000-8000-00000000000a") == 5
    store.connect_agent(endpoint, "session-a", {})
    assert {t["owner"] for t in store.lease(endpoint, "session-a", 10, 0)} == {"alice"}


def test_cancelling_a_leased_task_tells_its_agent_at_the_next_lease(store, endpoint):
    ids, group = _submit(store, endpoint, 3)
    store.connect_agent(endpoint, "session-a", {})
    assert len(store.lease(endpoint, "session-a", 10, 0)) == 3
    assert store.cancel(ids[0], b"") == "cancelling"
    again = store.lease(endpoint, "session-a", 10, 0)
    assert list(again) == [] and again.cancels == [ids[0]]
    assert store.lease(endpoint, "session-a", 10, 0).cancels == []  # told once
    # handed back unfinished (a graceful stop), it ends cancelled instead of queueing again
    store.release(endpoint, "session-a", ids)
    assert _states(store, ids) == ["cancelled", "waiting-for-endpoint", "waiting-for-endpoint"]


def test_a_batch_naming_a_task_twice_stores_it_once(store, endpoint):
    batch = tasks(2)
    group = "00000000-0000-4000-8000-00000000000c"
    assert store.submit("alice", endpoint, group, [*batch, batch[0]]) == 1
    assert store.group_counts(group) == {"waiting-for-endpoint": 2}
    store.connect_agent(endpoint, "session-a", {})
    assert len(store.lease(endpoint, "session-a", 10, 0)) == 2


def test_big_batches_and_the_commands_a_task_costs(store, endpoint):
    """Scripts gather per-task writes (counts, queue entries, indexes) into one command each:
    a task submitted, leased, finished and read costs about a dozen Valkey commands, and
    batches longer than a Lua ``unpack`` takes go through whole."""
    n = 2500
    ids, group = _submit(store, endpoint, n, group="00000000-0000-4000-8000-00000000000d")
    store.connect_agent(endpoint, "session-a", {})
    store.redis.config_resetstat()
    leased = store.lease(endpoint, "session-a", n, 0)
    assert len(leased) == n and store.group_counts(group) == {"leased": n}
    assert store.store_results(endpoint, [_ok(t) for t in ids], "session-a") == (n, 0)
    cursor, page = store.read_results(group, "0", 0, n + 10)  # and the "leased" event
    assert len(page) == n and store.group_counts(group) == {"success": n}
    assert store.endpoint_counts(endpoint) == (0, 0)  # every queue entry is gone
    assert store.redis.zcard(keys.endings()) == 0
    calls = {name.removeprefix("cmdstat_"): int(stats["calls"])
             for name, stats in store.redis.info("commandstats").items()}
    per_task = sum(v for k, v in calls.items() if k not in ("evalsha", "info")) / n
    # lease 2 (HMGET, HSET), results 5, read 1, plus each script's few batched writes
    assert per_task < 8.5, calls
