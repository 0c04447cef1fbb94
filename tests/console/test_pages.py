"""Console pages on the real app and a real Valkey: who sees what, escaping, sharing, tokens,
task groups (live stream, sample statistics, cancelling), and page times for 100,000 tasks."""

from __future__ import annotations

import json
import re
import time
import uuid

import pytest
from fedcompute.protocol import ExceptionEnvelope, TaskResult
from fedcompute.service.auth import hash_token
from fedcompute.service.console import live

from tests.reliability.helpers import report

from .conftest import csrf_of

SCRIPT = "<script>alert(1)</script>"
IMG = '<img src=x onerror="alert(2)">'


def _lease(service, endpoint: str, n: int) -> str:
    """Lease the next ``n`` queued tasks (submission order) to a new agent session."""
    session = f"session-{uuid.uuid4()}"
    service.store.connect_agent(endpoint, session, {"workers": 1})
    leased = 0
    while leased < n:
        got = service.store.lease(endpoint, session, min(2000, n - leased), 0)
        assert got, "nothing left to lease"
        leased += len(got)
    return session


def _finish(service, endpoint: str, ids: list[str], failed: bool = False, **fields) -> None:
    """Lease ``ids`` (the next queued tasks) and report them finished, as an agent does."""
    _lease(service, endpoint, len(ids))
    exc = ExceptionEnvelope(type="builtins.ValueError", message=f"bad {IMG}",
                            traceback=f"Traceback:\n  raise ValueError('bad {IMG}')")
    for i in range(0, len(ids), 2000):
        service.store.store_results(endpoint, [
            TaskResult(task_id=t, status="failed" if failed else "success",
                       result=None if failed else b"\x80\x05result",
                       exception=exc if failed else None, **fields)
            for t in ids[i:i + 2000]])


def _events(reply) -> list[tuple[str, str, dict]]:
    """(event, id, data) of a finished server-sent event stream."""
    out = []
    for block in reply.get_data(as_text=True).split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            out.append((fields["event"], fields.get("id", ""), json.loads(fields["data"])))
    return out


@pytest.fixture
def alice_world(service):
    """alice's endpoint, function, a group of 4 tasks (2 succeeded, 1 failed, 1 waiting)."""
    token = service.user("alice", label="laptop")
    endpoint = service.endpoint("alice", "alice-ep")
    function = service.function("alice", SCRIPT)
    group, ids = service.group("alice", endpoint, function, 4)
    _finish(service, endpoint, ids[:2], stdout=f"out {SCRIPT}", stderr="err")
    _finish(service, endpoint, ids[2:3], failed=True)
    return {"token": token, "endpoint": endpoint, "function": function, "group": group,
            "tasks": ids}


def _alice_urls(w: dict) -> list[str]:
    return [f"/console/endpoints/{w['endpoint']}", f"/console/functions/{w['function']}",
            f"/console/groups/{w['group']}", f"/console/groups/{w['group']}/stats",
            f"/console/groups/{w['group']}/events", f"/console/tasks/{w['tasks'][0]}",
            f"/console/tasks/{w['tasks'][0]}/result", f"/console/tasks/{w['tasks'][2]}"]


def test_owner_sees_every_page(service, alice_world):
    client = service.client(alice_world["token"])
    for path in _alice_urls(alice_world):
        reply = client.get(path)
        assert reply.status_code == 200, path
    assert client.get(f"/console/tasks/{alice_world['tasks'][0]}/result").data == \
        b"\x80\x05result"


def test_another_user_sees_none_of_it(service, alice_world):
    bob = service.client(service.user("bob"))
    for path in _alice_urls(alice_world):
        reply = bob.get(path)
        assert reply.status_code == 404, path
        assert alice_world["endpoint"] not in reply.text or "not found" in reply.text
    for path in ("/console/endpoints", "/console/groups", "/console/functions",
                 "/console/tokens"):
        text = bob.get(path).text
        for value in (alice_world["endpoint"], alice_world["function"], alice_world["group"],
                      "alice-ep", "laptop"):
            assert value not in text, (path, value)
    csrf = csrf_of(bob.get("/console/tokens").text)
    alice_hash = hash_token(alice_world["token"])
    posts = {f"/console/groups/{alice_world['group']}/cancel": {},
             f"/console/tasks/{alice_world['tasks'][3]}/cancel": {},
             f"/console/endpoints/{alice_world['endpoint']}/sharing": {"op": "public"},
             f"/console/functions/{alice_world['function']}/sharing": {"op": "public"},
             "/console/tokens/revoke": {"token_id": alice_hash}}
    for path, form in posts.items():
        assert bob.post(path, data={"csrf": csrf, **form}).status_code == 404, path
    assert service.store.get_tasks([alice_world["tasks"][3]])[0]["status"] == \
        "waiting-for-endpoint"
    assert not service.store.get_endpoint(alice_world["endpoint"])["public"]
    assert service.store.lookup_token(hash_token(alice_world["token"]))[0]["name"] == "alice"
    # Invalid ids are a clear 400, never a server error.
    assert bob.get("/console/tasks/not-a-uuid").status_code == 400


def test_shared_objects_are_visible_but_not_changeable(service, alice_world):
    alice = service.client(alice_world["token"])
    bob = service.client(service.user("bob"))
    for kind, oid in (("endpoints", alice_world["endpoint"]),
                      ("functions", alice_world["function"])):
        page = f"/console/{kind}/{oid}"
        csrf = csrf_of(alice.get(page).text)
        reply = alice.post(f"{page}/sharing", data={"csrf": csrf, "op": "add", "user": "bob"})
        assert reply.status_code == 303
        shown = bob.get(page)
        assert shown.status_code == 200 and 'id="share-add"' not in shown.text
        bob_csrf = csrf_of(bob.get("/console/tokens").text)
        assert bob.post(f"{page}/sharing", data={"csrf": bob_csrf, "op": "public"}
                        ).status_code == 404
        alice.post(f"{page}/sharing", data={"csrf": csrf, "op": "public"})
        assert "now public" in alice.get(page).text
        alice.post(f"{page}/sharing", data={"csrf": csrf, "op": "private"})
        alice.post(f"{page}/sharing", data={"csrf": csrf, "op": "remove", "user": "bob"})
        assert bob.get(page).status_code == 404
        reply = alice.post(f"{page}/sharing", data={"csrf": csrf, "op": "add",
                                                    "user": "<b>x</b>"})
        assert "letters, digits" in alice.get(page).text
    assert "alice-ep" not in bob.get("/console/endpoints").text


def test_user_text_is_escaped_everywhere(service, alice_world):
    client = service.client(alice_world["token"])
    pages = ["/console/functions", f"/console/functions/{alice_world['function']}",
             f"/console/groups/{alice_world['group']}",
             f"/console/tasks/{alice_world['tasks'][0]}",
             f"/console/tasks/{alice_world['tasks'][2]}"]
    for path in pages:
        text = client.get(path).text
        assert SCRIPT not in text and IMG not in text and "<img" not in text, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text, path
    failed = client.get(f"/console/tasks/{alice_world['tasks'][2]}").text
    assert "builtins.ValueError" in failed
    assert "raise ValueError(&#39;bad &lt;img src=x onerror=&#34;alert(2)&#34;&gt;&#39;)" in failed


def test_task_page_shows_timeline_result_and_output(service, alice_world):
    client = service.client(alice_world["token"])
    text = client.get(f"/console/tasks/{alice_world['tasks'][0]}").text
    order = [m for m in re.findall(r'<li data-state="([a-z-]+)"', text)]
    # The scripted agent leased it and stored its result; it never said it started.
    assert order == ["received", "waiting-for-endpoint", "leased", "success", "completed"]
    assert "8 B of serialized" in text and "get_result(" in text
    assert 'id="stdout">out &lt;script&gt;' in text and 'id="stderr">err' in text
    assert 'id="cancel-task"' not in text
    waiting = client.get(f"/console/tasks/{alice_world['tasks'][3]}").text
    assert 'id="cancel-task"' in waiting
    reply = client.post(f"/console/tasks/{alice_world['tasks'][3]}/cancel",
                        data={"csrf": csrf_of(waiting)})
    assert reply.status_code == 303
    assert "Task cancelled." in client.get(reply.headers["Location"]).text
    assert service.store.get_tasks([alice_world["tasks"][3]])[0]["status"] == "cancelled"


def test_tokens_are_listed_and_revoked(service):
    token = service.user("carol", label="laptop")
    other = service.user("carol", label="ci <runner>")
    client = service.client(token)
    page = client.get("/console/tokens").text
    assert "laptop" in page and "ci &lt;runner&gt;" in page and "this session" in page
    assert token not in page and other not in page
    other_hash = hash_token(other)
    assert f'data-token-id="{other_hash[:8]}"' in page
    reply = client.post("/console/tokens/revoke",
                        data={"csrf": csrf_of(page), "token_id": other_hash})
    assert reply.status_code == 303
    assert not service.store.lookup_token(other_hash)[0]
    assert f"{other_hash[:8]}" not in client.get("/console/tokens").text.split("<tbody>")[1]
    # Revoking the session's own token signs it out.
    reply = client.post("/console/tokens/revoke",
                        data={"csrf": csrf_of(client.get("/console/tokens").text),
                              "token_id": hash_token(token)})
    assert reply.headers["Location"] == "/console/login"
    assert client.get("/console/tokens").status_code == 302


def test_live_stream_is_bounded_and_resumes(service, alice_world, monkeypatch):
    monkeypatch.setattr(live, "STREAM_SECONDS", 1.5)
    client = service.client(alice_world["token"])
    group, ids = alice_world["group"], alice_world["tasks"]
    started = time.monotonic()
    reply = client.get(f"/console/groups/{group}/events?cursor=0")
    assert reply.mimetype == "text/event-stream"
    events = _events(reply)
    assert time.monotonic() - started < 10  # the stream ended by itself
    assert [e for e, _, _ in events] == ["progress"] * len(events)
    assert len(events[0][2]["points"]) == 3  # every finished task since cursor 0
    assert events[0][2]["counts"] == {"success": 2, "failed": 1, "waiting-for-endpoint": 1}
    cursor = events[-1][1]
    # The browser reconnects with Last-Event-ID; the last task finishing ends the stream.
    service.store.cancel(ids[3], b"")
    reply = client.get(f"/console/groups/{group}/events", headers={"Last-Event-ID": cursor})
    events = _events(reply)
    assert events[-1][0] == "done"
    assert events[0][2]["counts"] == {"success": 2, "failed": 1, "cancelled": 1}
    assert events[0][2]["points"] == []  # a cancelled task has no duration or throughput
    # Streams per user are bounded: their slots are counted in Redis.
    for _ in range(live.STREAMS_PER_USER):
        assert service.store.open_stream("alice", live.STREAMS_PER_USER, 60)
    assert client.get(f"/console/groups/{group}/events").status_code == 429


def test_stats_sample_a_big_group_and_weigh_it(service, monkeypatch):
    monkeypatch.setattr(live, "SAMPLE_SIZE", 100)
    token = service.user("alice")
    endpoint = service.endpoint("alice")
    group, ids = service.group("alice", endpoint, service.function("alice"), 1000)
    _finish(service, endpoint, ids[:500])
    stats = service.client(token).get(f"/console/groups/{group}/stats").get_json()
    assert stats["size"] == 1000 and stats["sampled"] == 100 and not stats["exact"]
    assert len(stats["points"]) == 50  # every 10th task: half of them finished
    assert stats["weight"] == pytest.approx(10.0)
    assert all(p[1] is not None and p[1] >= 0 for p in stats["points"])


def test_cancel_a_group_in_pages(service, monkeypatch):
    from fedcompute.service.console import groups

    monkeypatch.setattr(groups, "CANCEL_PAGE", 7)
    token = service.user("alice")
    endpoint = service.endpoint("alice")
    group, ids = service.group("alice", endpoint, service.function("alice"), 50)
    _finish(service, endpoint, ids[:5])
    _lease(service, endpoint, 3)  # at the endpoint: stopped there, with its next lease
    client = service.client(token)
    page = client.get(f"/console/groups/{group}")
    assert "45 not ended yet" in page.text
    reply = client.post(f"/console/groups/{group}/cancel", data={"csrf": csrf_of(page.text)})
    assert reply.status_code == 303
    assert service.store.group_counts(group) == {"success": 5, "leased": 3, "cancelled": 42}
    text = client.get(f"/console/groups/{group}").text
    assert "Cancelled 42 tasks. 3 at the endpoint are being stopped there." in text


@pytest.mark.slow
def test_page_times_with_100k_tasks(service):
    """A 100,000-task group: 60,000 finished, the rest queued. Every page reads a bounded
    amount, so each renders in about the time it takes for a small group."""
    token = service.user("alice")
    endpoint = service.endpoint("alice")
    function = service.function("alice")
    t0 = time.perf_counter()
    group, ids = service.group("alice", endpoint, function, 100_000)
    _finish(service, endpoint, ids[:60_000])
    setup = time.perf_counter() - t0
    client = service.client(token)
    last = (100_000 - 1) // 50 * 50
    pages = {"group": f"/console/groups/{group}",
             "group_last_page": f"/console/groups/{group}?offset={last}",
             "group_500_per_page": f"/console/groups/{group}?offset=50000&limit=500",
             "stats_sample": f"/console/groups/{group}/stats",
             "groups": "/console/groups", "endpoints": "/console/endpoints",
             "task": f"/console/tasks/{ids[99_999]}"}
    timings = {}
    for name, path in pages.items():
        client.get(path)  # warm (templates compiled)
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            reply = client.get(path)
            best = min(best, time.perf_counter() - start)
            assert reply.status_code == 200, (path, reply.text[:300])
        timings[name] = round(best * 1000, 1)
    page = client.get(pages["group_last_page"]).text
    assert page.count('<tr data-task-id=') == 50 and "100,000" in page
    start = time.perf_counter()
    reply = client.post(f"/console/groups/{group}/cancel", data={"csrf": csrf_of(page)})
    timings["cancel_40k_queued"] = round((time.perf_counter() - start) * 1000, 1)
    assert reply.status_code == 303
    assert service.store.group_counts(group) == {"success": 60_000, "cancelled": 40_000}
    report("console page times, 100k-task group (ms, best of 3)", setup_s=round(setup, 1),
           **timings)
    for name in ("group", "group_last_page", "stats_sample", "groups", "task"):
        assert timings[name] < 1000, timings
