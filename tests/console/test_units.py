"""The console's pure helpers: the progress bar's shares, chart points, timelines, sharing
form changes, template filters."""

from __future__ import annotations

import pytest
from fedcompute.service.console import filters
from fedcompute.service.console.groups import progress
from fedcompute.service.console.live import duration, point
from fedcompute.service.console.sharing import change_from
from fedcompute.service.console.tasks import timeline
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import BadRequest


def test_progress_shares_add_up_and_count_final_states():
    bar = progress(200, {"success": 100, "failed": 20, "cancelled": 30, "running": 50})
    assert bar["done"] == 150 and bar["percent"] == 75.0
    widths = {s["state"]: s["width"] for s in bar["segments"]}
    assert widths["success"] == 50.0 and widths["running"] == 25.0
    assert sum(widths.values()) == 100.0
    xs = [s["x"] for s in bar["segments"]]
    assert xs == sorted(xs) and xs[0] == 0
    assert progress(0, {})["percent"] == 0.0  # an empty group (still being written)


def test_points_and_durations_come_from_the_timestamps():
    done = {"status": "success", "timestamps": {"received": 1.0, "running": 2.0,
                                                 "success": 2.5, "completed": 2.5}}
    assert duration(done) == 0.5 and point(done) == [2.5, 0.5, 0]
    failed = {"status": "failed", "timestamps": {"received": 1.0, "failed": 4.0}}
    assert duration(failed) is None and point(failed) == [4.0, None, 1]
    cancelled = {"status": "cancelled", "timestamps": {"cancelled": 3.0}}
    assert point(cancelled) is None and duration(cancelled) is None


def test_timeline_is_in_time_order():
    steps = timeline({"success": 5.0, "received": 1.0, "running": 2.0})
    assert [s["state"] for s in steps] == ["received", "running", "success"]
    assert [s["since"] for s in steps] == [0.0, 1.0, 4.0]


def test_sharing_changes():
    record = {"owner": "alice", "shared_with": ["bob"], "public": False}
    add = change_from(MultiDict({"op": "add", "user": "carol"}), record, "endpoint")
    assert add.shared_with == ["bob", "carol"] and add.public is None
    assert change_from(MultiDict({"op": "remove", "user": "bob"}), record, "endpoint"
                       ).shared_with == []
    assert change_from(MultiDict({"op": "public"}), record, "endpoint").public is True
    for form in ({"op": "add", "user": "alice"}, {"op": "add", "user": "bob"},
                 {"op": "remove", "user": "dave"}, {"op": "add", "user": "<b>"}):
        change = change_from(MultiDict(form), record, "endpoint")
        assert change.shared_with is None and change.public is None, form
    with pytest.raises(BadRequest):
        change_from(MultiDict({"op": "delete"}), record, "endpoint")


def test_filters():
    assert filters.seconds(0.0004) == "400 µs" and filters.seconds(0.012) == "12 ms"
    assert filters.seconds(1.25) == "1.25 s" and filters.seconds(184) == "3 min 4 s"
    assert filters.seconds(None) == "—" and filters.seconds(0) == "0 s"
    assert filters.size(812) == "812 B" and filters.size(1536) == "1.5 KiB"
    assert filters.ago(100.0, now=112.0) == "12 s ago"
    assert filters.ago(0.0) == "never" and filters.ago(100.0, now=100.0 + 7200) == "2 h ago"
    assert filters.when(0) == "—" and filters.when(86400.5) == "1970-01-02 00:00:00.500 UTC"
