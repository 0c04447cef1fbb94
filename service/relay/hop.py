"""Relay hops between service instances.

A user's Dask comm and the endpoint's dial-back may reach different API processes (several
processes, or hosts behind a load balancer). The process the endpoint reached (B) then forwards
the dial-back, byte for byte, to the process holding the user's side (A): it opens a TCP
connection to A's *hop listener* (each API process has one, on ``relay_internal_host``), sends
the dial-back's request head (plus the instances' shared secret) and copies bytes both ways. A
answers the websocket upgrade itself and relays as if the endpoint had reached it directly, so
B never looks inside (one extra loopback or LAN hop, no re-framing).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from urllib.parse import quote

from werkzeug.datastructures import Headers

from .peers import pipe

log = logging.getLogger(__name__)

SECRET_HEADER = "X-Fedcompute-Relay-Secret"
#: Request heads longer than this are refused.
MAX_HEAD = 64 * 1024
#: Headers of the endpoint's request a hop passes on.
FORWARDED = ("Authorization", "Upgrade", "Connection", "Sec-WebSocket-Key",
             "Sec-WebSocket-Version")

Handler = Callable[[socket.socket, bytes, str, Headers], None]


def request_head(path: str, environ: dict, secret: str) -> bytes:
    """The dial-back's request head, rebuilt from the WSGI environ, for the hop."""
    lines = [f"GET {quote(path)} HTTP/1.1", f"Host: {environ.get('HTTP_HOST', 'relay')}"]
    for name in FORWARDED:
        value = environ.get("HTTP_" + name.upper().replace("-", "_"))
        if value:
            lines.append(f"{name}: {value}")
    lines.append(f"{SECRET_HEADER}: {secret}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def forward(client: socket.socket, address: str, head: bytes, timeout: float = 10.0) -> None:
    """Send ``head`` to the instance at ``address`` and copy bytes both ways between it and
    ``client`` until either side closes."""
    host, _, port = address.rpartition(":")
    upstream = socket.create_connection((host, int(port)), timeout=timeout)
    upstream.settimeout(None)
    try:
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        upstream.sendall(head)
        pipe(client, upstream)
    finally:
        upstream.close()


def respond(sock: socket.socket, status: str, message: str) -> None:
    body = message.encode()
    sock.sendall(f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}"
                 f"\r\nConnection: close\r\n\r\n".encode() + body)


class HopListener:
    """Takes hops from other instances; ``handler(sock, head, path, headers)`` serves each."""

    def __init__(self, host: str, handler: Handler):
        self.host = host
        self.handler = handler
        self._server: socket.socket | None = None

    def start(self) -> str:
        """Listen on a free port; returns ``host:port``."""
        self._server = socket.create_server((self.host, 0))
        threading.Thread(target=self._serve, daemon=True, name="fedcompute-hop-listener").start()
        return f"{self.host}:{self._server.getsockname()[1]}"

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            # shutdown() wakes the listener blocked in accept(); close() alone would not,
            # and a socket opened next could reuse the descriptor under it.
            try:
                server.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            server.close()

    def _serve(self) -> None:
        server = self._server
        while server is not None:
            try:
                sock, _ = server.accept()
            except OSError:
                return
            if self._server is not server:  # stopped meanwhile
                sock.close()
                return
            threading.Thread(target=self._one, args=(sock,), daemon=True,
                             name="fedcompute-hop").start()

    def _one(self, sock: socket.socket) -> None:
        try:
            sock.settimeout(10)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk or len(head) > MAX_HEAD:
                    return
                head += chunk
            sock.settimeout(None)
            lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            _, path, _ = (lines[0].split(" ") + ["", ""])[:3]
            headers = Headers()
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers.add(name.strip(), value.strip())
            self.handler(sock, head, path, headers)
        except Exception as exc:  # noqa: BLE001 - one broken hop must not stop the listener
            log.info("relay hop failed: %s", exc)
        finally:
            sock.close()
