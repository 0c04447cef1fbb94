"""Function registration, lookup, sharing and deletion."""

from __future__ import annotations

from fedcompute.protocol import API_VERSION, FunctionRegistration, SharingUpdate
from fedcompute.serialize import function_digest
from flask import Blueprint

from ..access import owned, usable
from ..auth import require_user
from ..context import fed
from ..scopes import MANAGE, READ, SUBMIT
from . import uuid_arg
from .wire import parse, reply, within_limit

bp = Blueprint("functions", __name__, url_prefix=f"/{API_VERSION}/functions")


@bp.post("")
def register():
    user = require_user(SUBMIT)
    reg = parse(FunctionRegistration)
    within_limit("function body", len(reg.function_body), fed().settings.max_function_bytes,
                 "max_function_bytes")
    fid = fed().store.put_function(user, reg.function_name, reg.function_body,
                                   function_digest(reg.function_body), reg.description,
                                   reg.public, reg.shared_with, reg.shared_with_groups)
    return reply({"function_id": fid}, 201)


def _visible(function_id: str, user: str) -> dict:
    record = fed().store.get_function(uuid_arg(function_id, "function id"))
    return usable(record, user, f"function {function_id}")


@bp.get("/<function_id>")
def get(function_id: str):
    return reply(_visible(function_id, require_user(READ)))


def _owned(function_id: str, user: str) -> dict:
    return owned(_visible(function_id, user), user, f"function {function_id}")


@bp.patch("/<function_id>")
def share(function_id: str):
    user = require_user(MANAGE)
    _owned(function_id, user)
    update = parse(SharingUpdate)
    fed().store.share_function(function_id.lower(), update.public, update.shared_with,
                               update.shared_with_groups)
    return reply(_visible(function_id, user))


@bp.delete("/<function_id>")
def delete(function_id: str):
    user = require_user(MANAGE)
    _owned(function_id, user)
    fed().store.delete_function(function_id.lower(), user)
    return reply({"deleted": function_id.lower()})
