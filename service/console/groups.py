"""Task groups: the user's groups, one group's counts and pages of its tasks, cancelling it.

A group may hold 100,000 tasks, so nothing here reads a group whole: counts come from the
per-state counters the Lua scripts keep, the task list is one page (``LRANGE``) of light
records (state, function, timestamps: never payloads or results), and cancelling walks the
group in pages.
"""

from __future__ import annotations

import time

from fedcompute import errors, serialize
from fedcompute.protocol import packb
from flask import Response, redirect, request, url_for
from werkzeug.exceptions import BadRequest

from ..api.wire import reply
from ..context import fed
from ..scopes import SUBMIT
from ..store import sharing_allows
from ..store.console import CANCELLABLE_STATES, FINAL_STATES
from . import bp, session
from .filters import seconds
from .live import duration
from .objects import owned_group

GROUPS_PER_PAGE = 50
TASKS_PER_PAGE = 50
MAX_TASKS_PER_PAGE = 500
#: Cancelling a group reads and cancels this many tasks per round trip...
CANCEL_PAGE = 1000
#: ...for at most this long per request (the rest on the next press of the button).
CANCEL_BUDGET = 20.0
#: Bar segments, in the order drawn (left to right).
BAR_STATES = ("success", "failed", "cancelled", "running", "waiting-for-nodes", "leased",
              "waiting-for-endpoint", "received")


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    try:
        value = int(request.args.get(name, default))
    except ValueError as exc:
        raise BadRequest(f"{name} must be an integer") from exc
    return min(max(value, low), high)


def progress(size: int, counts: dict[str, int]) -> dict:
    """The bar: each state's share of the group (percent), finished count and percentage."""
    total = max(size, sum(counts.values()), 1)
    done = sum(counts.get(s, 0) for s in FINAL_STATES)
    segments, x = [], 0.0
    for state in BAR_STATES:
        width = 100.0 * counts.get(state, 0) / total
        segments.append({"state": state, "x": round(x, 4), "width": round(width, 4),
                         "count": counts.get(state, 0)})
        x += width
    return {"size": size, "done": done, "segments": segments,
            "percent": 100.0 * done / total if size else 0.0}


@bp.get("/groups")
def groups() -> tuple[str, int]:
    user = session.user()
    store = fed().store
    offset = _int_arg("offset", 0, 0, 10**9)
    page = store.groups_of(user, offset, GROUPS_PER_PAGE + 1)
    more = len(page) > GROUPS_PER_PAGE
    page = page[:GROUPS_PER_PAGE]
    summaries = store.group_summaries([g for g, _ in page])
    rows = [{"group": g, "updated": when, "progress": progress(size, counts), "counts": counts}
            for (g, when), (size, counts) in zip(page, summaries, strict=True)]
    return session.render("console/groups.html", groups=rows, offset=offset, more=more,
                          per_page=GROUPS_PER_PAGE, section="groups")


@bp.get("/groups/<group>")
def group(group: str) -> tuple[str, int]:
    user = session.user()
    group = owned_group(group, user)
    store = fed().store
    limit = _int_arg("limit", TASKS_PER_PAGE, 1, MAX_TASKS_PER_PAGE)
    size = store.group_size(group)
    last = max(size - 1, 0) // limit * limit
    offset = _int_arg("offset", 0, 0, last)
    counts = store.group_counts(group)
    tasks = store.group_light_page(group, offset, limit)
    names = store.function_names([t["function_id"] for t in tasks if t["function_id"]])
    for t in tasks:
        fn = names.get(t["function_id"])
        t["function_name"] = fn["function_name"] if fn and sharing_allows(fn, user) else None
        t["duration"] = duration(t)
    cancellable = sum(counts.get(s, 0) for s in CANCELLABLE_STATES)
    return session.render("console/group.html", group=group, size=size, counts=counts,
                          progress=progress(size, counts), tasks=tasks, offset=offset,
                          limit=limit, last=last, cancellable=cancellable, section="groups")


@bp.get("/groups/<group>/rows")
def rows(group: str) -> Response:
    """The states and durations of one page of the group's tasks (the page's script keeps
    the task list it shows up to date with these)."""
    group = owned_group(group, session.user())
    limit = _int_arg("limit", TASKS_PER_PAGE, 1, MAX_TASKS_PER_PAGE)
    offset = _int_arg("offset", 0, 0, 10**9)
    tasks = fed().store.group_light_page(group, offset, limit)
    return reply({"tasks": [{"task_id": t["task_id"], "status": t["status"],
                             "duration": seconds(duration(t))} for t in tasks]})


@bp.post("/groups/<group>/cancel")
def cancel_group(group: str) -> Response:
    """Cancel every task of the group not ended yet, page by page (those an endpoint holds
    are stopped there)."""
    user = session.require(SUBMIT)
    group = owned_group(group, user)
    store = fed().store

    def envelope(task_id: str) -> bytes:
        return packb(serialize.error_envelope(
            errors.TaskCancelled, f"task {task_id} was cancelled with its task group {group}"))

    started = time.monotonic()
    cancelled = stopping = offset = 0
    finished = True
    if any(store.group_counts(group).get(s) for s in CANCELLABLE_STATES):
        while offset < store.group_size(group):
            if time.monotonic() - started > CANCEL_BUDGET:
                finished = False
                break
            ids = store.cancellable_in(group, offset, CANCEL_PAGE)
            states = store.cancel_many(ids, envelope) if ids else {}
            cancelled += sum(1 for s in states.values() if s == "cancelled")
            stopping += sum(1 for s in states.values() if s == "cancelling")
            offset += CANCEL_PAGE
    message = f"Cancelled {cancelled:,} task{'s' if cancelled != 1 else ''}."
    if stopping:
        message += f" {stopping:,} at the endpoint are being stopped there."
    if not finished:
        message += " There are more: press Cancel again for the rest."
    session.flash(message)
    return redirect(url_for("console.group", group=group), 303)
