"""Function registration, lookup, sharing and deletion."""

from __future__ import annotations

from fedcompute.protocol import API_VERSION, FunctionRegistration, SharingUpdate
from fedcompute.serialize import function_digest
from flask import Blueprint
from werkzeug.exceptions import NotFound, RequestEntityTooLarge

from ..auth import require_user
from ..store import sharing_allows
from . import fed, uuid_arg
from .wire import parse, reply

bp = Blueprint("functions", __name__, url_prefix=f"/{API_VERSION}/functions")


@bp.post("")
def register():
    user = require_user()
    reg = parse(FunctionRegistration)
    limit = fed().settings.max_function_bytes
    if len(reg.function_body) > limit:
        raise RequestEntityTooLarge(
            f"function body is {len(reg.function_body)} bytes; the limit is {limit} bytes")
    fid = fed().store.put_function(user, reg.function_name, reg.function_body,
                                   function_digest(reg.function_body), reg.description,
                                   reg.public, reg.shared_with)
    return reply({"function_id": fid}, 201)


def _visible(function_id: str, user: str) -> dict:
    record = fed().store.get_function(uuid_arg(function_id, "function id"))
    if record is None or not sharing_allows(record, user):
        raise NotFound(f"function {function_id} not found")
    return record


@bp.get("/<function_id>")
def get(function_id: str):
    return reply(_visible(function_id, require_user()))


def _owned(function_id: str, user: str) -> dict:
    record = _visible(function_id, user)
    if record["owner"] != user:
        raise NotFound(f"function {function_id} not found among your functions")
    return record


@bp.patch("/<function_id>")
def share(function_id: str):
    user = require_user()
    _owned(function_id, user)
    update = parse(SharingUpdate)
    fed().store.update_sharing("fn", function_id.lower(), update.public, update.shared_with)
    return reply(_visible(function_id, user))


@bp.delete("/<function_id>")
def delete(function_id: str):
    user = require_user()
    _owned(function_id, user)
    fed().store.delete_function(function_id.lower(), user)
    return reply({"deleted": function_id.lower()})
