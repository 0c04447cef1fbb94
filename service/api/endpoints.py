"""Endpoint registration, listing, status, sharing and deletion (user side)."""

from __future__ import annotations

import uuid

from fedcompute.protocol import API_VERSION, EndpointRegistration, SharingUpdate
from flask import Blueprint, request
from werkzeug.exceptions import BadRequest

from ..access import owned, usable
from ..auth import ENDPOINT_PREFIX, hash_token, new_token, require_user
from ..context import fed
from ..scopes import ENDPOINT, MANAGE, READ
from . import uuid_arg
from .wire import parse, reply

bp = Blueprint("endpoints", __name__, url_prefix=f"/{API_VERSION}/endpoints")

_PUBLIC_FIELDS = ("endpoint_id", "name", "owner", "public", "shared_with", "shared_with_groups",
                  "allowed_functions", "status", "last_heartbeat", "created")


def public_view(record: dict) -> dict:
    return {k: record[k] for k in _PUBLIC_FIELDS}


@bp.post("")
def register():
    """Register an endpoint (or re-register one of yours); returns a new credential."""
    user = require_user(ENDPOINT)
    reg = parse(EndpointRegistration)
    store = fed().store
    endpoint_id = reg.endpoint_id or str(uuid.uuid4())
    if reg.endpoint_id:
        existing = store.get_endpoint(endpoint_id)
        if existing is not None:
            owned(existing, user, f"endpoint {endpoint_id}")
    credential = new_token(ENDPOINT_PREFIX)
    store.put_endpoint(endpoint_id, user, reg.name, reg.public, reg.shared_with,
                       reg.allowed_functions, reg.metadata, hash_token(credential),
                       reg.shared_with_groups if "shared_with_groups" in reg.model_fields_set
                       else None)
    return reply({"endpoint_id": endpoint_id, "name": reg.name, "credential": credential}, 201)


#: ``?role=`` of the endpoint list, as in Globus Compute: ``owner`` (yours) or ``any`` (all
#: you may use: yours, shared with you, public; the default).
ROLES = ("owner", "any")


@bp.get("")
def list_endpoints():
    user = require_user(READ)
    unknown = sorted(set(request.args) - {"role"})
    if unknown:
        raise BadRequest(f"unknown query parameter {unknown[0][:40]!r}: use role")
    role = request.args.get("role", "any")
    if role not in ROLES:
        raise BadRequest(f"invalid role {role[:40]!r}: use one of {', '.join(ROLES)}")
    records = fed().store.endpoints_of(user, user.groups)
    return reply([public_view(r) for r in records if role == "any" or r["owner"] == user])


def visible_endpoint(endpoint_id: str, user: str) -> dict:
    record = fed().store.get_endpoint(uuid_arg(endpoint_id, "endpoint id"))
    return usable(record, user, f"endpoint {endpoint_id}")


def _owned(endpoint_id: str, user: str) -> dict:
    return owned(visible_endpoint(endpoint_id, user), user, f"endpoint {endpoint_id}")


@bp.get("/<endpoint_id>")
def get(endpoint_id: str):
    return reply(public_view(visible_endpoint(endpoint_id, require_user(READ))))


@bp.get("/<endpoint_id>/status")
def status(endpoint_id: str):
    record = visible_endpoint(endpoint_id, require_user(READ))
    queued, leased = fed().store.endpoint_counts(record["endpoint_id"])
    return reply({"endpoint_id": record["endpoint_id"], "status": record["status"],
                  "last_heartbeat": record["last_heartbeat"], "queued": queued,
                  "leased": leased, "details": record["details"]})


@bp.patch("/<endpoint_id>")
def update(endpoint_id: str):
    user = require_user(MANAGE)
    _owned(endpoint_id, user)
    change = parse(SharingUpdate)
    # An explicit null lifts the restriction; an absent field leaves it as it is.
    fed().store.share_endpoint(endpoint_id.lower(), change.public, change.shared_with,
                               change.allowed_functions,
                               clear_allowed="allowed_functions" in change.model_fields_set
                               and change.allowed_functions is None,
                               shared_with_groups=change.shared_with_groups)
    return reply(public_view(visible_endpoint(endpoint_id, user)))


@bp.delete("/<endpoint_id>")
def delete(endpoint_id: str):
    user = require_user(MANAGE)
    _owned(endpoint_id, user)
    failed = fed().store.delete_endpoint(endpoint_id.lower(), user)
    return reply({"deleted": endpoint_id.lower(), "tasks_failed": failed})
