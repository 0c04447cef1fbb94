"""One task: its state timeline, result (size and download: the service never unpickles it),
exception (type, message, remote traceback, as text), captured output; cancelling it."""

from __future__ import annotations

from fedcompute import errors, serialize
from fedcompute.protocol import packb
from flask import Response, redirect, url_for
from werkzeug.exceptions import NotFound

from ..context import fed
from ..scopes import SUBMIT
from ..store import sharing_allows
from ..store.console import FINAL_STATES
from . import bp, session
from .live import duration
from .objects import owned_task, owned_task_id

#: What each timestamp means on the timeline.
_MEANING = {
    "received": "submitted to the service",
    "waiting-for-endpoint": "queued for the endpoint",
    "waiting-for-nodes": "at the endpoint, waiting for a worker",
    "leased": "leased by the endpoint, queued there",
    "running": "started on a worker",
    "success": "finished",
    "failed": "failed",
    "cancelled": "cancelled",
    "completed": "result stored",
}


def timeline(stamps: dict[str, float]) -> list[dict]:
    """The task's timestamps in time order, each with the time since the first."""
    ordered = sorted(stamps.items(), key=lambda item: item[1])
    first = ordered[0][1] if ordered else 0.0
    return [{"state": state, "at": at, "since": at - first, "meaning": _MEANING.get(state, "")}
            for state, at in ordered]


@bp.get("/tasks/<task_id>")
def task(task_id: str) -> tuple[str, int]:
    user = session.user()
    record = owned_task(task_id, user)
    store = fed().store
    function = store.function_names([record["function_id"]]).get(record["function_id"] or "")
    endpoint = store.get_endpoint(record["endpoint_id"]) if record["endpoint_id"] else None
    exc = record.get("exception")
    exception = None
    if isinstance(exc, dict):
        exception = {"type": str(exc.get("type") or "Exception"),
                     "message": str(exc.get("message") or ""),
                     "traceback": str(exc.get("traceback") or "")}
    return session.render(
        "console/task.html", task=record, timeline=timeline(record["timestamps"]),
        duration=duration(record), exception=exception,
        result_size=len(record["result"]) if record.get("result") else None,
        function=function if function and sharing_allows(function, user) else None,
        endpoint=endpoint if endpoint and sharing_allows(endpoint, user) else None,
        final=record["status"] in FINAL_STATES, section="groups")


@bp.get("/tasks/<task_id>/result")
def result(task_id: str) -> Response:
    """The stored result, as the opaque bytes it is (load it with the SDK)."""
    record = owned_task(task_id, session.user())
    if not record.get("result"):
        raise NotFound(f"task {task_id} has no result")
    return Response(record["result"], mimetype="application/octet-stream", headers={
        "Content-Disposition": f'attachment; filename="task-{record["task_id"]}.result"'})


@bp.post("/tasks/<task_id>/cancel")
def cancel(task_id: str) -> Response:
    task_id = owned_task_id(task_id, session.require(SUBMIT))
    envelope = packb(serialize.error_envelope(errors.TaskCancelled,
                                              f"task {task_id} was cancelled"))
    state = fed().store.cancel(task_id, envelope)
    if state == "cancelled":
        session.flash("Task cancelled.")
    elif state == "cancelling":
        session.flash("The endpoint holds the task: it is being stopped there.")
    elif state in FINAL_STATES:
        session.flash(f"The task had already ended ({state}).")
    else:
        session.flash(f"The task could not be cancelled ({state}).")
    return redirect(url_for("console.task", task_id=task_id), 303)
