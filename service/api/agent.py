"""The endpoint agent's side of the API: connect, lease, results, heartbeats, release."""

from __future__ import annotations

from fedcompute.protocol import (
    API_VERSION,
    AgentHello,
    Heartbeat,
    LeaseRequest,
    Release,
    ResultBatch,
    TaskOutput,
    TaskStateUpdate,
)
from flask import Blueprint
from werkzeug.exceptions import Conflict, NotFound

from ..auth import require_endpoint
from ..context import fed
from ..store import StaleSession
from .wire import parse, reply, within_limit

bp = Blueprint("agent", __name__, url_prefix=f"/{API_VERSION}/agent")


def _endpoint() -> dict:
    endpoint_id = require_endpoint()
    record = fed().store.get_endpoint(endpoint_id)
    if record is None:
        raise NotFound(f"endpoint {endpoint_id} was deleted")
    return record


@bp.post("/connect")
def connect():
    """A new agent session: returns its configuration; earlier sessions' leases are reclaimed."""
    endpoint = _endpoint()
    hello = parse(AgentHello)
    reclaimed = fed().store.connect_agent(endpoint["endpoint_id"], hello.session, hello.status)
    return reply({"endpoint_id": endpoint["endpoint_id"], "name": endpoint["name"],
                  "owner": endpoint["owner"], "allowed_functions": endpoint["allowed_functions"],
                  "heartbeat_interval": fed().settings.heartbeat_interval,
                  "heartbeat_timeout": fed().settings.heartbeat_timeout,
                  "reclaimed": reclaimed})


@bp.post("/heartbeat")
def heartbeat():
    endpoint_id = require_endpoint()
    beat = parse(Heartbeat)
    if not fed().store.heartbeat(endpoint_id, beat.session, beat.status):
        raise Conflict("this agent session was replaced by a newer one; stop or reconnect")
    return reply({"ok": True})


@bp.post("/lease")
def lease():
    """Long-poll for up to ``max_tasks`` tasks; unknown function bodies come along."""
    endpoint_id = require_endpoint()
    req = parse(LeaseRequest)
    store = fed().store
    wait = min(req.wait, fed().settings.max_lease_wait)
    try:
        tasks = store.lease(endpoint_id, req.session, req.max_tasks, wait, recover=req.recover,
                            status=req.status)
    except StaleSession as exc:
        raise Conflict("this agent session was replaced by a newer one; stop or reconnect") \
            from exc
    known = set(req.cached_functions)
    wanted = sorted({t["function_id"] for t in tasks} - known)
    return reply({"tasks": tasks, "functions": store.function_bodies(wanted) if wanted else {},
                  "cancel": getattr(tasks, "cancels", [])})


@bp.post("/results")
def results():
    """Store finished tasks; duplicates (redeliveries) are acknowledged and ignored."""
    endpoint_id = require_endpoint()
    batch = parse(ResultBatch)
    for r in batch.results:
        within_limit(f"result of task {r.task_id}", len(r.result or b""),
                     fed().settings.max_payload_bytes, "max_payload_bytes")
    stored, dup = fed().store.store_results(endpoint_id, batch.results, batch.session)
    return reply({"stored": stored, "duplicates": dup})


@bp.post("/tasks/state")
def task_state():
    """The agent reports tasks waiting for nodes (no worker yet) or running."""
    endpoint_id = require_endpoint()
    update = parse(TaskStateUpdate)
    return reply({"updated": fed().store.mark(endpoint_id, update.state, update.task_ids,
                                              update.workers)})


@bp.post("/tasks/output")
def task_output():
    """The agent sends live output of running tasks submitted with ``stream_output``."""
    endpoint_id = require_endpoint()
    update = parse(TaskOutput)
    return reply({"kept": fed().store.add_output(
        endpoint_id, [b.model_dump() for b in update.batches],
        fed().settings.max_output_bytes)})


@bp.post("/release")
def release():
    """Hand back leased tasks (graceful stop); they are requeued without counting an attempt."""
    endpoint_id = require_endpoint()
    rel = parse(Release)
    return reply({"released": fed().store.release(endpoint_id, rel.session, rel.task_ids,
                                                  disconnect=rel.disconnect)})
