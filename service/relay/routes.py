"""The relay's routes (all authenticated with ``Authorization: Bearer``):

* ``/v1/agent/control`` — each endpoint's Dask bridge keeps one open (endpoint credential). It
  says hello (session id, Python/Dask versions) and receives ``{"op": "dial", "comm_id": ...}``.
* ``/v1/endpoints/<endpoint_id>/dask`` — a user allowed on the endpoint opens one per Dask comm.
  The relay asks the endpoint to dial and waits for it.
* ``/v1/agent/dask/<comm_id>`` — the endpoint's dial-out; only that endpoint may answer. If the
  user's side waits on another instance, this one forwards the connection there (``hop.py``).
* ``GET /v1/endpoints/<endpoint_id>/dask/info`` — is a bridge connected, with which versions,
  and does it show its dashboard (``dashboard.py`` serves that).
"""

from __future__ import annotations

import hmac
import json
import logging
import socket
from typing import Any

from fedcompute.protocol import dashboard_path
from flask import Blueprint, Response, current_app, request
from werkzeug.datastructures import Headers
from werkzeug.exceptions import (
    Forbidden,
    HTTPException,
    NotFound,
    ServiceUnavailable,
    TooManyRequests,
)
from wsproto.events import CloseConnection, Ping, TextMessage

from ..access import usable
from ..api import uuid_arg
from ..api.wire import reply
from ..auth import UserName, authenticate, check_scope
from ..context import fed
from ..scopes import READ, SUBMIT
from . import hop
from .peers import BROKEN, CLOSE_DIAL_FAILED, Pair, Peer, pump
from .state import Control, Relay

log = logging.getLogger(__name__)
bp = Blueprint("dask_relay", __name__)


def relay() -> Relay:
    rel = fed().relay
    rel.start(current_app._get_current_object())  # once per process
    return rel


def _principal(kind: str, headers: Any = None, scope: str | None = None) -> str:
    """The caller's name (for a user with ``scope``: a ``UserName`` carrying its groups)."""
    principal = authenticate(headers if headers is not None else request.headers)
    if principal.kind != kind:
        raise Forbidden("this connection needs "
                        f"{'a user token' if kind == 'user' else 'an endpoint credential'}")
    if scope is not None:
        check_scope(principal, scope)  # 403 naming the scope the token lacks
        return UserName(principal)
    return principal.name


def _usable_endpoint(endpoint_id: str, user: str) -> dict:
    """The endpoint record if ``user`` may run Dask on it (404 hides others' endpoints)."""
    record = usable(fed().store.get_endpoint(endpoint_id), user, f"endpoint {endpoint_id}")
    if record.get("allowed_functions") is not None:
        # A Dask client runs arbitrary code on the endpoint: that would bypass the restriction.
        raise Forbidden(f"endpoint {endpoint_id} only runs its allowed_functions; "
                        "Dask access to it is disabled")
    return record


def bridge_with_room(rel: Relay, endpoint_id: str, user: str) -> dict:
    """The endpoint's connected bridge, if the relay has room for one more of ``user``'s
    connections (else 503, or 429 at the per-user limit)."""
    control = rel.control(endpoint_id)
    if control is None:
        raise ServiceUnavailable(f"endpoint {endpoint_id} has no Dask bridge connected: it is "
                                 "offline, starting, or runs without Dask access")
    if rel.open_comms(user=user) >= rel.max_comms_per_user:
        raise TooManyRequests(f"you have {rel.max_comms_per_user} relayed connections open "
                              "(the limit); close Dask clients and dashboards you no longer use")
    if rel.open_comms() >= rel.max_comms:
        raise ServiceUnavailable("the service's Dask relay is at its connection limit; "
                                 "try again later")
    return control


class _Upgraded(Response):
    """The response after a websocket ended: nothing more to write (as flask-sock does)."""

    def __call__(self, environ: dict, start_response: Any) -> Any:
        if "gunicorn.socket" in environ:
            raise StopIteration()  # gunicorn closes the connection
        return super().__call__(environ, start_response)


@bp.route("/v1/endpoints/<endpoint_id>/dask/info", methods=["GET"])
def dask_info(endpoint_id: str) -> Response:
    """Whether the endpoint's Dask bridge is connected, and its versions."""
    endpoint_id = uuid_arg(endpoint_id, "endpoint id")
    _usable_endpoint(endpoint_id, _principal("user", scope=READ))
    rel = relay()
    control = rel.control(endpoint_id)
    return reply({"endpoint_id": endpoint_id, "connected": control is not None,
                  "session": control["session"] if control else None,
                  "connected_since": control["since"] if control else None,
                  "versions": control["versions"] if control else {},
                  "dashboard": bool(control and control.get("dashboard")),
                  "dashboard_path": dashboard_path(endpoint_id),
                  "open_comms": rel.open_comms_of(endpoint_id)})


@bp.route("/v1/endpoints/<endpoint_id>/dask", websocket=True)
def user_comm(endpoint_id: str) -> Response:
    """A user's Dask comm: ask the endpoint to dial, then relay user -> endpoint."""
    endpoint_id = uuid_arg(endpoint_id, "endpoint id")
    user_name = _principal("user", scope=SUBMIT)
    _usable_endpoint(endpoint_id, user_name)
    rel = relay()
    control = bridge_with_room(rel, endpoint_id, user_name)
    pair = rel.new_pair(endpoint_id, control["session"], Peer.accept(request.environ), user_name)
    try:
        if not rel.dial(pair):
            pair.close(CLOSE_DIAL_FAILED, f"endpoint {endpoint_id} is not reachable right now")
        elif not pair.ready.wait(rel.dial_timeout) or pair.endpoint is None:
            pair.close(CLOSE_DIAL_FAILED, f"endpoint {endpoint_id} did not answer within "
                       f"{rel.dial_timeout:.0f}s")
        else:
            pump(pair.user, pair.endpoint, pair, "user")
    finally:
        rel.forget(pair)
    return _Upgraded()


def _attach(pair: Pair, peer: Peer) -> None:
    """The endpoint's side reached the user's: relay endpoint -> user."""
    fed().relay.registry.answered(pair.comm_id)
    if pair.attach(peer):
        pump(peer, pair.user, pair, "endpoint")
    else:
        peer.close(CLOSE_DIAL_FAILED, "the client gave up")


@bp.route("/v1/agent/dask/<comm_id>", websocket=True)
def endpoint_comm(comm_id: str) -> Response:
    """The endpoint's dial-out for ``comm_id``: relay it here, or hop to the instance holding
    the user's side."""
    endpoint_id = _principal("endpoint")
    rel = relay()
    pair = rel.pair(comm_id)
    if pair is not None:
        if pair.endpoint_id != endpoint_id or pair.endpoint is not None:
            raise NotFound("no such pending Dask connection (the client gave up or it was "
                           "answered)")
        _attach(pair, Peer.accept(request.environ))
        return _Upgraded()
    waiting = rel.registry.comm(comm_id)
    address = waiting and rel.registry.address_of(waiting["instance"])
    if not waiting or waiting["endpoint"] != endpoint_id or not address:
        raise NotFound("no such pending Dask connection (the client gave up or it was answered)")
    client = request.environ.get("gunicorn.socket")
    if client is None:
        raise ServiceUnavailable("this server cannot forward relayed connections")
    head = hop.request_head(request.path, request.environ, rel.registry.secret())
    rel.registry.count_hop()
    try:
        hop.forward(client, address, head)
    except OSError as exc:
        log.info("relay hop to %s failed: %s", address, exc)
    return _Upgraded()


def serve_hop(rel: Relay, sock: socket.socket, head: bytes, path: str,
              headers: Headers) -> None:
    """A dial-back forwarded by another instance (runs on this process's hop listener)."""
    if not hmac.compare_digest(headers.get(hop.SECRET_HEADER, ""), rel.registry.secret()):
        hop.respond(sock, "403 Forbidden", "not a relay hop")
        return
    comm_id = path.rpartition("/")[2]
    with rel._app.app_context():
        try:
            endpoint_id = _principal("endpoint", headers)
        except HTTPException as exc:
            hop.respond(sock, f"{exc.code} {exc.name}", exc.description or "")
            return
        pair = rel.pair(comm_id)
        if pair is None or pair.endpoint_id != endpoint_id or pair.endpoint is not None:
            hop.respond(sock, "404 Not Found", "no such pending Dask connection")
            return
        _attach(pair, Peer.accept_raw(sock, head))


@bp.route("/v1/agent/control", websocket=True)
def endpoint_control() -> Response:
    """An endpoint bridge's control connection: hello first, then dial requests go out."""
    endpoint_id = _principal("endpoint")
    if fed().store.get_endpoint(endpoint_id) is None:
        raise NotFound(f"endpoint {endpoint_id} was deleted")
    rel = relay()
    peer = Peer.accept(request.environ)
    peer.sock.settimeout(rel.control_idle_timeout)
    control = Control(endpoint_id, peer)
    registered = False
    try:
        while True:
            events = peer.recv_events()
            if events is None:
                return _Upgraded()
            for event in events:
                if isinstance(event, Ping):
                    peer.send([event.response()])
                elif isinstance(event, CloseConnection):
                    return _Upgraded()
                elif isinstance(event, TextMessage) and event.message_finished:
                    msg = _json(event.data)
                    if msg.get("op") == "hello" and not registered:
                        control.session = str(msg.get("session") or "")[:64]
                        control.versions = {str(k)[:64]: str(v)[:64] for k, v in
                                            dict(msg.get("versions") or {}).items()}
                        control.dashboard = str(msg.get("dashboard") or "")[:256]
                        rel.register(control)
                        registered = True
                        peer.send_json({"op": "welcome", "endpoint_id": endpoint_id})
    except BROKEN as exc:  # incl. the idle timeout
        log.info("dask control connection of endpoint %s ended: %s", endpoint_id, exc)
    finally:
        if registered:
            rel.unregister(control)
        peer.close(1001, "control connection closed")
    return _Upgraded()


def _json(data: str) -> dict:
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
