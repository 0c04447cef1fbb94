"""Websocket ends the relay joins, and the pump that forwards between two of them.

The relay reads sockets itself, in chunks of at most ``CHUNK`` bytes, and forwards each chunk of
a message as a websocket fragment before reading more: memory stays bounded whatever the
message size (Dask sends 8 MiB shards), and a slow reader stalls the sender through TCP
(backpressure). That is why it does not use flask-sock's reader, which buffers whole messages.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from typing import Any

import simple_websocket
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

log = logging.getLogger(__name__)

#: Bytes read from a socket at a time: the most the relay holds per direction.
CHUNK = 1024 * 1024
#: Close codes the relay sends (4000-4999 are for applications).
CLOSE_ENDPOINT_GONE = 4001
CLOSE_DIAL_FAILED = 4002
CLOSE_REPLACED = 4003
#: Codes that must not appear in a close frame; replaced when forwarding.
_UNSENDABLE = {1005, 1006, 1015}
#: What a broken connection raises.
BROKEN = (OSError, LocalProtocolError, RemoteProtocolError)


class _NoReaderThread:
    """Stands in for simple-websocket's reader thread: the relay reads the socket itself."""

    def __init__(self, target: Any = None, **_: Any):
        self.name = "fedcompute-relay"

    def start(self) -> None:
        pass


class Peer:
    """One accepted websocket: its socket, its wsproto state and a lock for writes."""

    def __init__(self, sock: socket.socket, conn: WSConnection):
        self.sock = sock
        self.conn = conn
        self.lock = threading.Lock()
        self._buf = bytearray(CHUNK)
        self._view = memoryview(self._buf)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        except OSError:  # pragma: no cover - not TCP
            pass

    @classmethod
    def accept(cls, environ: dict) -> Peer:
        """Upgrade the current WSGI request (simple-websocket does the handshake)."""
        server = simple_websocket.Server(environ, thread_class=_NoReaderThread,
                                         max_message_size=None)
        server.sock.settimeout(None)
        return cls(server.sock, server.ws)

    @classmethod
    def accept_raw(cls, sock: socket.socket, head: bytes) -> Peer:
        """Upgrade a connection whose HTTP request head was read by hand (the relay hop)."""
        conn = WSConnection(ConnectionType.SERVER)
        conn.receive_data(head)
        if not any(isinstance(e, Request) for e in conn.events()):
            raise RemoteProtocolError("not a websocket upgrade request", event_hint=None)
        sock.sendall(conn.send(AcceptConnection()))
        return cls(sock, conn)

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
            except BROKEN:
                pass
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class RawPeer:
    """A plain connection taken over from the WSGI server (a browser's request to the Dask
    dashboard): what it sends becomes binary messages for the other side, and the other
    side's messages are written to it as they are. Has :class:`Peer`'s interface."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.lock = threading.Lock()
        self._buf = bytearray(CHUNK)
        self._view = memoryview(self._buf)
        sock.settimeout(None)

    def recv_events(self) -> list | None:
        n = self.sock.recv_into(self._buf)
        return [BytesMessage(data=bytes(self._view[:n]))] if n else None

    def send(self, events: list) -> None:
        with self.lock:
            for event in events:
                if isinstance(event, Message):
                    data = event.data
                    self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def close(self, code: int = 1000, reason: str = "") -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class Pair:
    """A relayed connection: the user's side and, once dialed, the endpoint's. ``target`` is
    what the endpoint joins it to: its scheduler (``"dask"``) or its HTTP server
    (``"dashboard"``)."""

    def __init__(self, comm_id: str, endpoint_id: str, session: str, user: Peer | RawPeer | None,
                 user_name: str = "", target: str = "dask"):
        self.comm_id = comm_id
        self.target = target
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

    def give_up(self, code: int, reason: str) -> None:
        """Close the endpoint's side (if it came) but leave the user's open: it is still a
        plain HTTP request, which gets an error response instead."""
        self.user = None
        self.close(code, reason)


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
    except BROKEN as exc:
        if not pair.closed:
            log.debug("relay %s: %s side: %s", pair.comm_id, src_name, exc)
            code, reason = 1011, f"relay: {src_name} connection failed"
    finally:
        pair.close(code, reason)


def pipe(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways between two sockets until either closes (the relay hop's
    forwarding side: it does not look inside)."""
    done = threading.Event()

    def copy(src: socket.socket, dst: socket.socket) -> None:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        try:
            while True:
                n = src.recv_into(buf)
                if not n:
                    break
                dst.sendall(view[:n])
        except OSError:
            pass
        finally:
            done.set()
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    other = threading.Thread(target=copy, args=(b, a), daemon=True, name="fedcompute-hop")
    other.start()
    copy(a, b)
    other.join()
