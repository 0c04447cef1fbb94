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
