"""A task group's live progress and statistics.

* ``/stats``: throughput and durations estimated from a **bounded systematic sample** of the
  group (:data:`SAMPLE_SIZE` tasks spread evenly over its submission order; the whole group
  when it is smaller). Each sampled finished task stands for ``weight`` finished tasks, so
  that the estimate adds up to the group's real finished count.
* ``/events``: server-sent events from the group's result stream, starting where ``/stats``
  left off: the exact counts by state (kept by the Lua scripts) and one point per task that
  finished, which the browser adds to the charts' buckets as they arrive (weight 1).

An open stream holds a server thread, so a stream lives at most :data:`STREAM_SECONDS` (the
browser reconnects by itself and resumes from the last event id) and a user may hold
:data:`STREAMS_PER_USER` at once. It ends as soon as every task of the group is final.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

from flask import Response, request
from werkzeug.exceptions import BadRequest, TooManyRequests

from ..api.wire import reply
from ..context import fed
from ..store import Store
from ..store.console import FINAL_STATES
from . import bp, session
from .objects import owned_group

SAMPLE_SIZE = 1000
STREAM_SECONDS = 60.0
STREAMS_PER_USER = 6
#: A quiet group still gets fresh counts (tasks starting to run) this often.
QUIET_WAIT = 5.0
#: At most a few events a second, however fast results come in...
MIN_INTERVAL = 0.25
#: ...each with the points of at most this many finished tasks.
BATCH = 1000

_CURSOR = re.compile(r"^\d{1,20}(-\d{1,20})?$")


def duration(record: dict) -> float | None:
    """Seconds from the start on a worker (``running``; ``leased`` for a task whose start
    was not reported) to the result, for tasks that ran to success or failure."""
    stamps = record["timestamps"]
    end, start = stamps.get(record["status"]), stamps.get("running") or stamps.get("leased")
    if record["status"] not in ("success", "failed") or end is None or start is None:
        return None
    return max(0.0, end - start)


def point(record: dict) -> list | None:
    """``[finished at, duration or null, failed (0/1)]`` for a task that ran to its end."""
    status = record["status"]
    if status not in ("success", "failed"):
        return None
    stamps = record["timestamps"]
    end = stamps.get(status) or stamps.get("completed")
    if end is None:
        return None
    d = duration(record)
    return [round(end, 3), None if d is None else round(d, 6), int(status == "failed")]


def _finished(counts: dict[str, int]) -> int:
    return counts.get("success", 0) + counts.get("failed", 0)


@bp.get("/groups/<group>/stats")
def stats(group: str) -> Response:
    group = owned_group(group, session.user())
    store = fed().store
    cursor = store.results_cursor(group)  # first: the live stream from here misses nothing
    size, sample = store.group_sample(group, SAMPLE_SIZE)
    counts = store.group_counts(group)
    points = [p for p in map(point, sample) if p is not None]
    started = min((r["timestamps"]["received"] for r in sample
                   if "received" in r["timestamps"]), default=None)
    weight = _finished(counts) / len(points) if points else 0.0
    return reply({"cursor": cursor, "size": size, "sampled": len(sample),
                  "exact": size <= SAMPLE_SIZE, "weight": weight, "points": points,
                  "counts": counts, "started": started})


@bp.get("/groups/<group>/events")
def events(group: str) -> Response:
    user = session.user()
    group = owned_group(group, user)
    cursor = request.headers.get("Last-Event-ID") or request.args.get("cursor", "0")
    if not _CURSOR.match(cursor):
        raise BadRequest("invalid cursor")
    store = fed().store
    if not store.open_stream(user, STREAMS_PER_USER, STREAM_SECONDS):
        raise TooManyRequests(f"at most {STREAMS_PER_USER} live views at once; close one")
    return Response(_stream(store, user, group, cursor), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def _event(name: str, cursor: str, data: dict) -> str:
    return f"id: {cursor}\nevent: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _stream(store: Store, user: str, group: str, cursor: str) -> Iterator[str]:
    """The events of one stream's life (bounded; see the module's docstring)."""
    try:
        deadline = time.monotonic() + STREAM_SECONDS
        yield "retry: 1000\n\n"
        woken: list[dict] = []
        while True:
            cursor, more = store.finished_since(group, cursor, BATCH)
            size, counts = store.group_size(group), store.group_counts(group)
            points = [p for p in map(point, woken + more) if p is not None]
            yield _event("progress", cursor, {"size": size, "counts": counts, "points": points})
            if size and sum(counts.get(s, 0) for s in FINAL_STATES) >= size:
                yield _event("done", cursor, {})
                return
            if len(more) < BATCH and store.stopping.wait(MIN_INTERVAL):
                return
            left = deadline - time.monotonic()
            if left <= 0 or store.stopping.is_set():
                return
            # The store's long-poll does the waiting (one record: it only wakes us up; the
            # light read above fetches the rest without payloads).
            cursor, woken = store.read_results(group, cursor, min(left, QUIET_WAIT), 1)
    finally:
        store.close_stream(user)
