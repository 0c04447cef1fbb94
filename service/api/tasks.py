"""Task submission, status, results, cancellation and task groups (user side)."""

from __future__ import annotations

import re
import uuid

from fedcompute import errors, serialize
from fedcompute.protocol import API_VERSION, TaskBatch, TaskIds, packb
from flask import Blueprint, request
from werkzeug.exceptions import BadRequest, Conflict, Forbidden, NotFound

from ..access import owned, usable
from ..auth import require_user
from ..context import fed
from ..jobs import enqueue_fanout
from ..scopes import READ, SUBMIT
from . import uuid_arg
from .wire import parse, reply, within_limit

bp = Blueprint("tasks", __name__, url_prefix=f"/{API_VERSION}")

_CURSOR = re.compile(r"^\d{1,20}(-\d{1,20})?$")


def _check_batch(batch: TaskBatch, user: str) -> None:
    settings = fed().settings
    within_limit("batch", len(batch.tasks), settings.max_batch_tasks, "max_batch_tasks",
                 "tasks")
    for task in batch.tasks:
        within_limit(f"task {task.task_id} payload", len(task.payload),
                     settings.max_payload_bytes, "max_payload_bytes")
    endpoint = usable(fed().store.endpoint_access(batch.endpoint_id), user,
                      f"endpoint {batch.endpoint_id}")
    function_ids = sorted({t.function_id for t in batch.tasks})
    verdicts = fed().store.functions_usable(function_ids, user, getattr(user, "groups", ()))
    for fid, ok in verdicts.items():
        if not ok:
            raise NotFound(f"function {fid} not found")
    allowed = endpoint["allowed_functions"]
    if allowed is not None:
        denied = [fid for fid in function_ids if fid not in allowed]
        if denied:
            raise Forbidden(f"endpoint {batch.endpoint_id} does not allow function {denied[0]}")


@bp.post("/tasks")
def submit():
    """Submit a batch of tasks for one endpoint, in one Redis script."""
    user = require_user(SUBMIT)
    batch = parse(TaskBatch)
    _check_batch(batch, user)
    group = batch.task_group_id or str(uuid.uuid4())
    tasks = batch.tasks
    task_ids = [t.task_id for t in tasks]
    store = fed().store
    if len(tasks) > fed().settings.fanout_threshold and fed().queue is not None:
        # Big batches are written by an RQ worker in slices, so this request returns fast.
        # Claimed now, so that the group is the caller's at once (get_task_group works while
        # the worker writes) and a conflict is answered here, not lost in the worker.
        if not store.claim_group(group, user):
            raise Conflict("task group belongs to another user")
        enqueue_fanout(fed(), user, batch.endpoint_id, group, tasks)
        return reply({"task_group_id": group, "task_ids": task_ids, "duplicates": 0}, 202)
    try:
        dup = store.submit(user, batch.endpoint_id, group, tasks)
    except PermissionError as exc:
        raise Conflict(str(exc)) from exc
    return reply({"task_group_id": group, "task_ids": task_ids, "duplicates": dup}, 201)


def _public(record: dict) -> dict:
    record = dict(record)
    record.pop("owner", None)
    return record


@bp.get("/tasks/<task_id>")
def get_task(task_id: str):
    user = require_user(READ)
    record = fed().store.get_tasks([uuid_arg(task_id, "task id")])[0]
    return reply(_public(owned(record, user, f"task {task_id}")))


@bp.post("/tasks/get")
def get_tasks():
    user = require_user(READ)
    ids = parse(TaskIds).task_ids
    records = fed().store.get_tasks(ids)
    return reply({"tasks": {tid: _public(r) if r and r["owner"] == user else None
                            for tid, r in zip(ids, records, strict=True)}})


@bp.post("/tasks/<task_id>/cancel")
def cancel(task_id: str):
    user = require_user(SUBMIT)
    task_id = uuid_arg(task_id, "task id")
    store = fed().store
    owned({"owner": store.task_owner(task_id)}, user, f"task {task_id}")
    envelope = packb(serialize.error_envelope(errors.TaskCancelled,
                                              f"task {task_id} was cancelled"))
    return reply({"task_id": task_id, "status": store.cancel(task_id, envelope)})


@bp.post("/tasks/cancel")
def cancel_many():
    """Cancel many tasks in one request: ``{"task_ids": [...]}`` → their states afterwards
    (``cancelled``, the state of one too far along, or ``unknown``: not yours or no such)."""
    user = require_user(SUBMIT)
    ids = parse(TaskIds).task_ids
    store = fed().store
    mine = [tid for tid, owner in zip(ids, store.task_owners(ids), strict=True) if owner == user]
    states = dict.fromkeys(ids, "unknown")
    states.update(store.cancel_many(mine, lambda tid: packb(serialize.error_envelope(
        errors.TaskCancelled, f"task {tid} was cancelled"))))
    return reply({"tasks": states})


def _owned_group(group: str, user: str, allow_new: bool = False) -> str:
    """The group id if ``user`` owns it (or, with ``allow_new``, nobody has created it yet)."""
    group = uuid_arg(group, "task group id")
    owner = fed().store.group_owner(group)
    if not (allow_new and owner is None):
        owned({"owner": owner}, user, f"task group {group}")
    return group


@bp.get("/task_groups/<group>")
def task_group(group: str):
    group = _owned_group(group, require_user(READ))
    return reply({"task_group_id": group, "task_ids": fed().store.group_task_ids(group)})


@bp.post("/task_groups/<group>/cancel")
def cancel_group(group: str):
    """Cancel every task of a group not finished yet (running ones are stopped at their
    endpoint); ``{"states": {state: count}}`` afterwards."""
    user = require_user(SUBMIT)
    group = _owned_group(group, user)
    store = fed().store
    states: dict[str, int] = {}
    size = store.group_size(group)
    for offset in range(0, size, 2000):
        ids = store.group_task_ids_page(group, offset, 2000)
        for state in store.cancel_many(ids, lambda tid: packb(serialize.error_envelope(
                errors.TaskCancelled, f"task {tid} was cancelled"))).values():
            states[state] = states.get(state, 0) + 1
    return reply({"task_group_id": group, "states": states})


@bp.get("/task_groups/<group>/results")
def results(group: str):
    """Long-poll the group's result stream: finished tasks after ``cursor``."""
    user = require_user(READ)
    # A submitter may start listening before its first batch has created the group.
    group = _owned_group(group, user, allow_new=True)
    unknown = sorted(set(request.args) - {"cursor", "wait", "limit", "events"})
    if unknown:
        raise BadRequest(f"unknown query parameter {unknown[0][:40]!r}: use cursor, wait, "
                         "limit, events")
    events = request.args.get("events", "0")
    if events not in ("0", "1"):
        raise BadRequest("events must be 0 or 1")
    cursor = request.args.get("cursor", "0")
    if not _CURSOR.match(cursor):
        raise BadRequest(f"invalid cursor {cursor[:40]!r}: pass back the cursor you were given")
    try:
        wait = float(request.args.get("wait", "0"))
        limit = int(request.args.get("limit", "1000"))
    except ValueError as exc:
        raise BadRequest("wait must be a number of seconds and limit an integer") from exc
    if not (0 <= wait < float("inf") and 1 <= limit <= 10_000):  # as documented; nan fails
        raise BadRequest("wait must be a number of seconds >= 0 and limit between 1 and 10000")
    wait = min(wait, fed().settings.max_result_wait)  # longer waits are cut to the service's
    cursor, records, state_events, output = fed().store.read_results(group, cursor, wait, limit,
                                                                     with_events=True)
    if records or state_events or output:
        _owned_group(group, user)  # created meanwhile: by this user only
    body = {"cursor": cursor, "results": [_public(r) for r in records]}
    if events == "1":
        body["events"] = state_events
        if output:
            body["output"] = output
    return reply(body)
