"""The Dask relay: joins a user's ``fed://`` websocket to a websocket the endpoint dials out.

Three websocket routes (all authenticated with ``Authorization: Bearer``):

* ``/v1/agent/control`` — each endpoint's Dask bridge keeps one open (endpoint credential). It
  says hello (session id, Python/Dask versions) and receives ``{"op": "dial", "comm_id": ...}``.
* ``/v1/endpoints/<endpoint_id>/dask`` — a user allowed on the endpoint opens one per Dask comm.
  The relay asks the endpoint to dial and waits for it.
* ``/v1/agent/dask/<comm_id>`` — the endpoint's dial-out; only that endpoint may answer.

plus ``GET /v1/endpoints/<endpoint_id>/dask/info`` (is a bridge connected, with which versions).

Both ends of a relayed comm meet in this process (gunicorn runs ONE worker process with many
threads), so pairing is in-process state. Each relayed comm holds two request threads, one per
direction. A thread reads its socket in chunks of at most ``CHUNK`` bytes and forwards each
chunk of a message as a websocket fragment before reading more: memory stays bounded whatever
the message size (Dask sends 8 MiB shards), and a slow reader stalls the sender through TCP
(backpressure). That is why the relay reads sockets itself instead of flask-sock's reader thread,
which buffers whole messages in an unbounded list. The upgrade itself uses simple-websocket
(what flask-sock wraps).
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import simple_websocket
from flask import Blueprint, Response, request
from werkzeug.exceptions import Forbidden, NotFound, ServiceUnavailable, TooManyRequests
from wsproto.events import CloseConnection, Message, Ping, TextMessage
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from .access import usable
from .api import uuid_arg
from .api.wire import reply
from .auth import authenticate
from .context import fed

log = logging.getLogger(__name__)

#: Bytes read from a socket at a time: the most the relay holds per direction.
CHUNK = 1024 * 1024
#: How long a user's connection waits for the endpoint to dial back.
DIAL_TIMEOUT = 30.0
#: A control connection silent this long (bridges ping every 20 s) is dropped.
CONTROL_IDLE_TIMEOUT = 75.0
#: Close codes the relay sends (4000-4999 are for applications).
CLOSE_ENDPOINT_GONE = 4001
CLOSE_DIAL_FAILED = 4002
CLOSE_REPLACED = 4003
#: Codes that must not appear in a close frame; replaced when forwarding.
_UNSENDABLE = {1005, 1006, 1015}

bp = Blueprint("dask_relay", __name__)


class _NoReaderThread:
    """Stands in for simple-websocket's reader thread: the relay reads the socket itself."""

    def __init__(self, target: Any = None, **_: Any):
        self.name = "fedcompute-relay"

    def start(self) -> None:
        pass


class Peer:
    """One accepted websocket: its socket, its wsproto state and a lock for writes."""

    def __init__(self, server: simple_websocket.Server):
        self.sock: socket.socket = server.sock
        self.conn = server.ws
        self.lock = threading.Lock()
        self._buf = bytearray(CHUNK)
        self._view = memoryview(self._buf)
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        except OSError:  # pragma: no cover - not TCP (tests on a unix socket)
            pass

    def recv_events(self) -> list | None:
        """Block for the next chunk; its events, or None when the peer is gone."""
        n = self.sock.recv_into(self._buf)
        if not n:
            return None
        self.conn.receive_data(bytes(self._view[:n]))
        return list(self.conn.events())

    def send(self, events: list) -> None:
        with self.lock:
            data = b"".join(self.conn.send(e) for e in events)
            self.sock.sendall(data)

    def send_json(self, obj: dict) -> None:
        self.send([TextMessage(data=json.dumps(obj))])

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame (best effort) and shut the socket, waking its reader."""
        code = 1001 if code in _UNSENDABLE else code
        with self.lock:
            try:
                self.sock.sendall(self.conn.send(CloseConnection(code=code, reason=reason[:120])))
            except (OSError, LocalProtocolError):
                pass
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@dataclass
class Control:
    """An endpoint's control connection."""

    endpoint_id: str
    peer: Peer
    session: str = ""
    versions: dict = field(default_factory=dict)
    since: float = field(default_factory=time.time)


class Pair:
    """A relayed comm: the user's websocket and, once dialed, the endpoint's."""

    def __init__(self, comm_id: str, endpoint_id: str, session: str, user: Peer,
                 user_name: str = ""):
        self.comm_id = comm_id
        self.user_name = user_name
        self.endpoint_id = endpoint_id
        self.session = session
        self.user = user
        self.endpoint: Peer | None = None
        self.ready = threading.Event()
        self.closed = False
        self._lock = threading.Lock()

    def attach(self, endpoint: Peer) -> bool:
        with self._lock:
            if self.closed or self.endpoint is not None:
                return False
            self.endpoint = endpoint
        self.ready.set()
        return True

    def close(self, code: int, reason: str) -> None:
        """Close both sides once (the first reason wins)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        for peer in (self.user, self.endpoint):
            if peer is not None:
                peer.close(code, reason)
        self.ready.set()


class Relay:
    """The in-process meeting point of users' comms and endpoints' dial-outs."""

    def __init__(self, max_comms: int, max_comms_per_user: int,
                 dial_timeout: float = DIAL_TIMEOUT,
                 control_idle_timeout: float = CONTROL_IDLE_TIMEOUT):
        self.max_comms = max_comms
        self.max_comms_per_user = max_comms_per_user
        self.dial_timeout = dial_timeout
        self.control_idle_timeout = control_idle_timeout
        self.lock = threading.Lock()
        self.controls: dict[str, Control] = {}
        self.pairs: dict[str, Pair] = {}

    @classmethod
    def from_settings(cls, settings: Any) -> Relay:
        """Relayed comms at once, in all and per user (``FEDCOMPUTE_DASK_MAX_COMMS[_PER_USER]``;
        each holds two API threads; a Dask client with a FederatedCluster uses 3)."""
        return cls(settings.dask_max_comms, settings.dask_max_comms_per_user)

    def control(self, endpoint_id: str) -> Control | None:
        with self.lock:
            return self.controls.get(endpoint_id)

    def register(self, control: Control) -> None:
        """Make ``control`` the endpoint's control connection; a new session means the endpoint
        restarted, so comms to its old scheduler are closed with a clear reason."""
        with self.lock:
            old = self.controls.get(control.endpoint_id)
            self.controls[control.endpoint_id] = control
            stale = [p for p in self.pairs.values() if p.endpoint_id == control.endpoint_id
                     and p.session != control.session]
        if old is not None:
            old.peer.close(CLOSE_REPLACED, "replaced by a newer connection of this endpoint")
        for pair in stale:
            pair.close(CLOSE_ENDPOINT_GONE, f"endpoint {control.endpoint_id} restarted; its Dask "
                       "scheduler and everything on it are gone")

    def unregister(self, control: Control) -> None:
        with self.lock:
            if self.controls.get(control.endpoint_id) is control:
                del self.controls[control.endpoint_id]

    def open_comms(self, endpoint_id: str | None = None, user: str | None = None) -> int:
        """Relayed comms (pending or active), of one endpoint and/or user, or all."""
        with self.lock:
            return sum(1 for p in self.pairs.values()
                       if endpoint_id in (None, p.endpoint_id) and user in (None, p.user_name))


def relay() -> Relay:
    return fed().relay


def _store() -> Any:
    return fed().store


def _principal(kind: str) -> str:
    principal = authenticate(request.headers)
    if principal.kind != kind:
        raise Forbidden(f"this connection needs {'a user token' if kind == 'user' else 'an endpoint credential'}")
    return principal.name


def _usable_endpoint(endpoint_id: str, user: str) -> dict:
    """The endpoint record if ``user`` may run Dask on it (404 hides others' endpoints)."""
    record = usable(_store().get_endpoint(endpoint_id), user, f"endpoint {endpoint_id}")
    if record.get("allowed_functions") is not None:
        # A Dask client runs arbitrary code on the endpoint: that would bypass the restriction.
        raise Forbidden(f"endpoint {endpoint_id} only runs its allowed_functions; "
                        "Dask access to it is disabled")
    return record


def _accept() -> Peer:
    server = simple_websocket.Server(request.environ, thread_class=_NoReaderThread,
                                     max_message_size=None)
    server.sock.settimeout(None)
    return Peer(server)


class _Upgraded(Response):
    """The response after a websocket ended: nothing more to write (as flask-sock does)."""

    def __call__(self, environ: dict, start_response: Any) -> Any:
        if "gunicorn.socket" in environ:
            raise StopIteration()  # gunicorn closes the connection
        return super().__call__(environ, start_response)


def pump(src: Peer, dst: Peer, pair: Pair, src_name: str) -> None:
    """Forward ``src``'s messages to ``dst`` until either side closes; then close both."""
    code, reason = 1000, ""
    try:
        while True:
            events = src.recv_events()
            if events is None:
                if src_name == "endpoint":
                    code, reason = CLOSE_ENDPOINT_GONE, (
                        f"endpoint {pair.endpoint_id} dropped the connection "
                        "(stopped, restarted or lost its network)")
                else:
                    code, reason = 1001, "the client went away"
                return
            out = []
            for event in events:
                if isinstance(event, Message):
                    out.append(event)
                elif isinstance(event, Ping):
                    src.send([event.response()])
                elif isinstance(event, CloseConnection):
                    if out:
                        dst.send(out)
                        out = []
                    code, reason = event.code, event.reason or ""
                    return
            if out:
                dst.send(out)
    except (OSError, LocalProtocolError, RemoteProtocolError) as exc:
        if not pair.closed:
            log.debug("relay %s: %s side: %s", pair.comm_id, src_name, exc)
            code, reason = 1011, f"relay: {src_name} connection failed"
    finally:
        pair.close(code, reason)


# --- routes --------------------------------------------------------------------------------


@bp.route("/v1/endpoints/<endpoint_id>/dask/info", methods=["GET"])
def dask_info(endpoint_id: str) -> Response:
    """Whether the endpoint's Dask bridge is connected, and its versions."""
    endpoint_id = uuid_arg(endpoint_id, "endpoint id")
    _usable_endpoint(endpoint_id, _principal("user"))
    control = relay().control(endpoint_id)
    return reply({"endpoint_id": endpoint_id, "connected": control is not None,
                  "session": control.session if control else None,
                  "connected_since": control.since if control else None,
                  "versions": control.versions if control else {},
                  "open_comms": relay().open_comms(endpoint_id)})


@bp.route("/v1/endpoints/<endpoint_id>/dask", websocket=True)
def user_comm(endpoint_id: str) -> Response:
    """A user's Dask comm: ask the endpoint to dial, then relay user -> endpoint."""
    endpoint_id = uuid_arg(endpoint_id, "endpoint id")
    user_name = _principal("user")
    _usable_endpoint(endpoint_id, user_name)
    rel = relay()
    control = rel.control(endpoint_id)
    if control is None:
        raise ServiceUnavailable(f"endpoint {endpoint_id} has no Dask bridge connected: it is "
                                 "offline, starting, or runs without Dask access")
    if rel.open_comms(user=user_name) >= rel.max_comms_per_user:
        raise TooManyRequests(f"you have {rel.max_comms_per_user} Dask connections open (the "
                              "limit); close clients you no longer use")
    if rel.open_comms() >= rel.max_comms:
        raise ServiceUnavailable("the service's Dask relay is at its connection limit; "
                                 "try again later")
    user = _accept()
    comm_id = secrets.token_urlsafe(18)
    pair = Pair(comm_id, endpoint_id, control.session, user, user_name)
    with rel.lock:
        rel.pairs[comm_id] = pair
    try:
        try:
            control.peer.send_json({"op": "dial", "comm_id": comm_id})
        except (OSError, LocalProtocolError):
            pair.close(CLOSE_DIAL_FAILED, f"endpoint {endpoint_id} is not reachable right now")
        if not pair.ready.wait(rel.dial_timeout) or pair.endpoint is None:
            pair.close(CLOSE_DIAL_FAILED, f"endpoint {endpoint_id} did not answer within "
                       f"{rel.dial_timeout:.0f}s")
        else:
            pump(user, pair.endpoint, pair, "user")
    finally:
        with rel.lock:
            rel.pairs.pop(comm_id, None)
    return _Upgraded()


@bp.route("/v1/agent/dask/<comm_id>", websocket=True)
def endpoint_comm(comm_id: str) -> Response:
    """The endpoint's dial-out for ``comm_id``: relay endpoint -> user."""
    endpoint_id = _principal("endpoint")
    rel = relay()
    with rel.lock:
        pair = rel.pairs.get(comm_id)
    if pair is None or pair.endpoint_id != endpoint_id or pair.endpoint is not None:
        raise NotFound("no such pending Dask connection (the client gave up or it was answered)")
    peer = _accept()
    if pair.attach(peer):
        pump(peer, pair.user, pair, "endpoint")
    else:
        peer.close(CLOSE_DIAL_FAILED, "the client gave up")
    return _Upgraded()


@bp.route("/v1/agent/control", websocket=True)
def endpoint_control() -> Response:
    """An endpoint bridge's control connection: hello first, then dial requests go out."""
    endpoint_id = _principal("endpoint")
    if _store().get_endpoint(endpoint_id) is None:
        raise NotFound(f"endpoint {endpoint_id} was deleted")
    rel = relay()
    peer = _accept()
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
                        rel.register(control)
                        registered = True
                        peer.send_json({"op": "welcome", "endpoint_id": endpoint_id})
    except (OSError, LocalProtocolError, RemoteProtocolError) as exc:  # incl. idle timeout
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

