"""Endpoints: the list the user may use, one endpoint's status and details, its sharing."""

from __future__ import annotations

from fedcompute.protocol import dashboard_path
from flask import Response, redirect, request, url_for

from ..access import owned
from ..context import fed
from ..scopes import MANAGE
from . import bp, session
from .objects import visible_endpoint
from .sharing import change_from

#: Status detail keys shown in their own columns, not in the "details" list.
_SHOWN = {"versions", "workers", "session"}


def _view(record: dict) -> dict:
    """An endpoint record with its queue counts, as the pages show it."""
    queued, leased = fed().store.endpoint_counts(record["endpoint_id"])
    details = record.get("details") or {}
    versions = details.get("versions") if isinstance(details.get("versions"), dict) else {}
    # An offline endpoint's last report says nothing about its workers now.
    workers = details.get("workers") if record["status"] == "online" else None
    return {**record, "queued": queued, "leased": leased, "workers": workers,
            "versions": versions,
            "other_details": {k: v for k, v in details.items() if k not in _SHOWN}}


@bp.get("/endpoints")
def endpoints() -> tuple[str, int]:
    user = session.user()
    rows = [_view(r) for r in fed().store.endpoints_of(user, user.groups)]
    return session.render("console/endpoints.html", endpoints=rows, user=user,
                          section="endpoints")


@bp.get("/endpoints/<endpoint_id>")
def endpoint(endpoint_id: str) -> tuple[str, int]:
    user = session.user()
    record = _view(visible_endpoint(endpoint_id, user))
    control = fed().relay.control(record["endpoint_id"])
    dashboard = ""
    if control and control.get("dashboard") and record.get("allowed_functions") is None:
        dashboard = dashboard_path(record["endpoint_id"]) + "/status"
    return session.render("console/endpoint.html", endpoint=record, user=user,
                          dashboard=dashboard, section="endpoints")


@bp.post("/endpoints/<endpoint_id>/sharing")
def share_endpoint(endpoint_id: str) -> Response:
    user = session.require(MANAGE)
    record = owned(visible_endpoint(endpoint_id, user), user, f"endpoint {endpoint_id}")
    change = change_from(request.form, record, "endpoint")
    if change.public is not None or change.shared_with is not None:
        fed().store.share_endpoint(record["endpoint_id"], change.public, change.shared_with,
                                   None)
    session.flash(change.message)
    return redirect(url_for("console.endpoint", endpoint_id=record["endpoint_id"]), 303)
