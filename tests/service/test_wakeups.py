"""Long-polls on wake channels (``store/wakeups.py``), on a real Valkey: when a poll reads."""

from __future__ import annotations

import threading
import time

import pytest
from fedcompute.service.store import keys


@pytest.fixture
def listening(store):
    """The store with its wake channel listener up (it wakes every poll when it connects)."""
    store.wakeups.start()
    assert store.wakeups.connected.wait(10)
    time.sleep(0.1)
    return store


def _counting(result_after: int | None = None):
    calls = []

    def read():
        calls.append(time.monotonic())
        return "tasks" if result_after is not None and len(calls) > result_after else None

    return read, calls


def test_an_idle_poll_reads_once(listening):
    """No wake-up, recheck as long as the wait: one read (at the start), none at the end."""
    read, calls = _counting()
    started = time.monotonic()
    assert listening.wakeups.poll(read, keys.wake_queue("idle"), 1.0, recheck=1.0) is None
    assert time.monotonic() - started >= 0.95
    assert len(calls) == 1


def test_a_wake_up_reads_again(listening):
    store = listening
    read, calls = _counting(result_after=1)
    channel = keys.wake_queue("woken")
    threading.Timer(0.3, lambda: store.redis.publish(channel, "")).start()
    started = time.monotonic()
    assert store.wakeups.poll(read, channel, 10.0, recheck=10.0) == "tasks"
    assert time.monotonic() - started < 5
    assert len(calls) == 2


def test_rechecks_while_waiting(listening):
    """A lost wake-up costs at most ``recheck`` (the SDK's result polls keep 5 s)."""
    read, calls = _counting(result_after=2)
    assert listening.wakeups.poll(read, keys.wake_queue("rechecked"), 5.0,
                                  recheck=0.3) == "tasks"
    assert len(calls) == 3
    assert 0.25 <= calls[1] - calls[0] < 1.5


def _reads(*replies):
    """A read answering ``replies`` in turn (then nothing new), and when it was called."""
    calls: list[float] = []
    left = list(replies)

    def read():
        calls.append(time.monotonic())
        return left.pop(0) if left else None

    return read, calls


def _partial(reply) -> bool:
    return reply == "events"


def test_state_events_alone_are_held_for_a_result(listening):
    """A poll whose first read finds only state events waits up to ``hold`` for a result
    and answers with both, in one reply."""
    store = listening
    channel = keys.wake_results("held")
    read, calls = _reads("events", "events+result")
    threading.Timer(0.2, lambda: store.redis.publish(channel, "")).start()
    reply = store.wakeups.poll(read, channel, 10.0, partial=_partial, hold=2.0)
    assert reply == "events+result"
    assert len(calls) == 2 and calls[1] - calls[0] >= 0.15


def test_held_state_events_come_back_at_the_end_of_the_hold(listening):
    read, calls = _reads("events")
    started = time.monotonic()
    reply = listening.wakeups.poll(read, keys.wake_results("hold-ends"), 10.0,
                                   partial=_partial, hold=0.3)
    assert reply == "events"
    assert 0.25 <= time.monotonic() - started < 2
    assert len(calls) == 1


def test_events_only_wake_ups_are_read_once_at_the_end_of_the_hold(listening):
    """Wake-ups saying "state events only" (b"e") are not read one by one: the poll reads
    them together when the hold ends; a wake-up with news is read at once."""
    store = listening
    channel = keys.wake_results("events-only")
    read, calls = _reads(None, "events")
    for delay in (0.1, 0.15, 0.2):
        threading.Timer(delay, lambda: store.redis.publish(channel, "e")).start()
    started = time.monotonic()
    reply = store.wakeups.poll(read, channel, 10.0, partial=_partial, hold=0.5)
    assert reply == "events"
    assert len(calls) == 2  # at the start, and once for the three wake-ups
    assert 0.5 <= time.monotonic() - started < 3

    read, calls = _reads(None, "result")
    threading.Timer(0.1, lambda: store.redis.publish(channel, "")).start()
    started = time.monotonic()
    assert store.wakeups.poll(read, channel, 10.0, partial=_partial, hold=5.0) == "result"
    assert time.monotonic() - started < 2


def test_a_local_notify_wakes_a_poll_without_pub_sub(listening):
    store = listening
    channel = keys.wake_results("local")
    read, calls = _reads(None, "result")
    threading.Timer(0.2, lambda: store.wakeups.notify([channel])).start()
    started = time.monotonic()
    assert store.wakeups.poll(read, channel, 10.0, recheck=10.0) == "result"
    assert time.monotonic() - started < 2


def test_quiet_after_a_cursor_until_a_message_announces_a_later_entry(listening):
    """A read that found nothing past a cursor: quiet until a message names a later entry
    (the echo of an entry already read changes nothing; a message naming none forgets)."""
    wakeups, publish = listening.wakeups, listening.redis.publish
    channel = keys.wake_results("quiet")
    token = wakeups.arm(channel)
    publish(channel, "e5-0")  # written while the read was in flight: the read saw it
    wakeups.settle(channel, token, "5-0")
    time.sleep(0.2)
    assert wakeups.quiet(channel, "5-0") and not wakeups.quiet(channel, "4-0")
    publish(channel, "6-0")
    _until(lambda: not wakeups.quiet(channel, "5-0"))
    wakeups.settle(channel, wakeups.arm(channel), "6-0")
    assert wakeups.quiet(channel, "6-0")
    publish(channel, "")  # names no entry: anything may have been written
    _until(lambda: not wakeups.quiet(channel, "6-0"))
    wakeups.settle(channel, token, "6-0")  # armed before it forgot: not taken
    assert not wakeups.quiet(channel, "6-0")
    wakeups.settle(channel, wakeups.arm(channel), "6-0")
    wakeups.wake_all()  # the listener reconnected: anything may have been missed
    assert not wakeups.quiet(channel, "6-0")


def test_a_result_poll_resuming_where_the_last_ended_skips_its_first_read(listening):
    """A result poll that drained its stream lets the next one, from its cursor, only wait;
    what is written after wakes it, and it reads then."""
    store = listening
    group = "g-quiet"
    stream, channel = keys.group_results(group), keys.wake_results(group)
    calls = []
    read_script = store.tasks.scripts.read_results

    def counted(*args, **kwargs):
        calls.append(time.monotonic())
        return read_script(*args, **kwargs)

    store.tasks.scripts.read_results = counted
    store.redis.xadd(stream, {"e": "running", "ids": "t1", "at": "1"})
    cursor, records, events, _ = store.read_results(group, "0", 0.2, 10, with_events=True)
    assert [e["task_ids"] for e in events] == [["t1"]] and len(calls) == 1
    started = time.monotonic()
    assert store.read_results(group, cursor, 0.3, 10, with_events=True) == (cursor, [], [], [])
    assert time.monotonic() - started >= 0.25 and len(calls) == 1  # no read at all

    def write() -> None:  # as the scripts do: the message names the entry
        entry = store.redis.xadd(stream, {"e": "running", "ids": "t2", "at": "2"})
        store.redis.publish(channel, b"e" + entry)

    threading.Timer(0.2, write).start()
    later, _, events, _ = store.read_results(group, cursor, 5.0, 10, with_events=True)
    assert [e["task_ids"] for e in events] == [["t2"]] and later != cursor
    assert len(calls) == 2
    # Another cursor (an SDK retrying an older one) is read as before.
    assert len(store.read_results(group, "0", 0.1, 10, with_events=True)[2]) == 2


def _until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
