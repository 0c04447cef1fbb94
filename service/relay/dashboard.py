"""An endpoint's Dask dashboard through the service, at ``dashboard_path(endpoint_id)``.

Each browser request (and each of the dashboard's websockets) is one relayed connection: the
service asks the endpoint's bridge to dial back for the ``"dashboard"`` target, writes the
request to it, and then copies bytes both ways between the browser's connection and the
endpoint's websocket, which the bridge joins to the scheduler's HTTP server on loopback. The
scheduler serves its routes under the same path, so the dashboard's links, scripts and
websockets all come back here. Nothing listens at the endpoint, as for Dask comms.

Who may look: users allowed on the endpoint, signed in to the console (its session cookie
reaches ``/console/...``) or sending ``Authorization: Bearer`` (scripts). Cookies and the
``Authorization`` header are not passed on, so the endpoint never sees a user's credentials;
a websocket opened with the cookie must come from the service's own origin (another site's
page cannot open one in the user's name).
"""

from __future__ import annotations

from urllib.parse import quote

from fedcompute.protocol import dashboard_path
from flask import Response, redirect, request, url_for
from werkzeug.exceptions import (
    Forbidden,
    GatewayTimeout,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
)
from wsproto.events import BytesMessage

from ..api import uuid_arg
from ..auth import UserName, check_scope
from ..console.session import same_origin, signed_in_user
from ..scopes import READ
from .peers import CLOSE_DIAL_FAILED, RawPeer, pump
from .routes import _principal, _Upgraded, _usable_endpoint, bp, bridge_with_room, relay

PREFIX = dashboard_path("<endpoint_id>")
#: Request headers not passed on: the user's credentials, and what concerns this hop only.
_DROPPED = {"authorization", "cookie", "proxy-authorization", "connection", "keep-alive",
            "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}


@bp.route(PREFIX + "/", defaults={"rest": ""}, methods=["GET", "HEAD"])
@bp.route(PREFIX + "/<path:rest>", methods=["GET", "HEAD"])
def dashboard(endpoint_id: str, rest: str) -> Response:
    """A page, script or data request of the endpoint's Dask dashboard."""
    return _relayed(endpoint_id, websocket=False)


@bp.route(PREFIX + "/<path:rest>", websocket=True)
def dashboard_socket(endpoint_id: str, rest: str) -> Response:
    """A websocket of the dashboard (Bokeh's live documents)."""
    return _relayed(endpoint_id, websocket=True)


def _viewer(websocket: bool) -> UserName | Response:
    """The user asking, by bearer token or console session; a browser that has neither is
    sent to the console's sign-in page, which brings it back."""
    if request.headers.get("Authorization"):
        return _principal("user", scope=READ)
    user = signed_in_user()
    if user is None:
        if not websocket and request.method == "GET":
            return redirect(url_for("console.login_form", next=request.full_path.rstrip("?")))
        raise Unauthorized("sign in to the console, or send Authorization: Bearer <token>")
    check_scope(user.principal, READ)
    if websocket and not same_origin():
        raise Forbidden("a dashboard websocket opened with a console session must come from "
                        "this service's own pages")
    return user


def _request_head(websocket: bool) -> bytes:
    """The browser's request as the scheduler gets it: one request per connection, without
    the user's credentials."""
    target = quote(request.script_root + request.path)
    if request.query_string:
        target += "?" + request.query_string.decode("latin-1")
    lines = [f"{request.method} {target} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in request.headers.items()
              if name.lower() not in _DROPPED]
    lines += (["Connection: Upgrade", "Upgrade: websocket"] if websocket
              else ["Connection: close"])
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _relayed(endpoint_id: str, websocket: bool) -> Response:
    endpoint_id = uuid_arg(endpoint_id, "endpoint id")
    viewer = _viewer(websocket)
    if isinstance(viewer, Response):
        return viewer
    _usable_endpoint(endpoint_id, viewer)
    rel = relay()
    control = bridge_with_room(rel, endpoint_id, viewer)
    if not control.get("dashboard"):
        raise NotFound(f"endpoint {endpoint_id} does not show its Dask dashboard (its engine "
                       "sets dashboard: false)")
    sock = request.environ.get("gunicorn.socket")
    if sock is None:
        raise ServiceUnavailable("this server cannot relay the dashboard (it runs under "
                                 "gunicorn: `fedcompute service start`)")
    pair = rel.new_pair(endpoint_id, control["session"], RawPeer(sock), viewer, "dashboard")
    try:
        if not rel.dial(pair):
            pair.give_up(CLOSE_DIAL_FAILED, "not reachable")
            raise ServiceUnavailable(f"endpoint {endpoint_id} is not reachable right now")
        if not pair.ready.wait(rel.dial_timeout) or pair.endpoint is None:
            pair.give_up(CLOSE_DIAL_FAILED, "no answer")
            raise GatewayTimeout(f"endpoint {endpoint_id} did not answer within "
                                 f"{rel.dial_timeout:.0f}s")
        pair.endpoint.send([BytesMessage(data=_request_head(websocket))])
        pump(pair.user, pair.endpoint, pair, "user")
    finally:
        rel.forget(pair)
    return _Upgraded()
