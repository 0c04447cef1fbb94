"""Functions: the user's own (with their sharing), one function's page, sharing changes."""

from __future__ import annotations

from flask import Response, redirect, request, url_for
from werkzeug.exceptions import BadRequest

from ..access import owned
from ..context import fed
from ..scopes import MANAGE
from . import bp, session
from .objects import visible_function
from .sharing import change_from

FUNCTIONS_PER_PAGE = 100


@bp.get("/functions")
def functions() -> tuple[str, int]:
    user = session.user()
    try:
        offset = max(0, int(request.args.get("offset", 0)))
    except ValueError as exc:
        raise BadRequest("offset must be an integer") from exc
    records = fed().store.functions_of(user)
    return session.render("console/functions.html",
                          functions=records[offset:offset + FUNCTIONS_PER_PAGE],
                          total=len(records), offset=offset, per_page=FUNCTIONS_PER_PAGE,
                          section="functions")


@bp.get("/functions/<function_id>")
def function(function_id: str) -> tuple[str, int]:
    user = session.user()
    record = visible_function(function_id, user)
    return session.render("console/function.html", function=record, user=user,
                          section="functions")


@bp.post("/functions/<function_id>/sharing")
def share_function(function_id: str) -> Response:
    user = session.require(MANAGE)
    record = owned(visible_function(function_id, user), user, f"function {function_id}")
    change = change_from(request.form, record, "function")
    if change.public is not None or change.shared_with is not None:
        fed().store.share_function(record["function_id"], change.public, change.shared_with)
    session.flash(change.message)
    return redirect(url_for("console.function", function_id=record["function_id"]), 303)
