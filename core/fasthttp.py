"""A lean keep-alive HTTP client for the calls every task makes (submit, result polls, leases,
results), over the standard library's ``http.client``.

Why not httpx there: on this project's 2-core machines httpx adds about 0.4 ms of client work
per request over ``http.client`` (httpx 0.28; measured against the same server), and a task
makes four such requests on its way. Everything else (sign-in, registration, token refresh)
keeps using httpx. This client is used only when no HTTP proxy applies to the service (then
httpx, which honours proxies, does the job).
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import urllib.request
from email.message import Message
from typing import Any
from urllib.parse import urlencode, urlsplit

from .tls import ssl_context


class TransportError(OSError):
    """The request did not get an answer (connection refused, reset, timed out)."""


class Response:
    """What :func:`fedcompute.http.decode` needs of a response."""

    __slots__ = ("status_code", "headers", "content")

    def __init__(self, status_code: int, headers: Message, content: bytes):
        self.status_code = status_code
        self.headers = headers
        self.content = content

    def json(self) -> Any:
        return json.loads(self.content)


def usable_for(url: str) -> bool:
    """False when an HTTP proxy applies to ``url`` (use httpx then)."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    return not (proxies.get(parts.scheme) and not urllib.request.proxy_bypass(parts.hostname))


class FastHTTP:
    """Requests to ``base_url`` (``https://host:port/prefix``); one connection per thread."""

    def __init__(self, base_url: str, verify: bool | str = True, timeout: float = 60.0):
        parts = urlsplit(base_url.rstrip("/"))
        self.secure = parts.scheme == "https"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.secure else 80)
        self.prefix = parts.path
        self.timeout = timeout
        self._tls: ssl.SSLContext | None = None
        if self.secure:
            self._tls = ssl_context(verify) or ssl.create_default_context()
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self.secure:
                conn = http.client.HTTPSConnection(self.host, self.port, timeout=timeout,
                                                   context=self._tls)
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        else:
            conn.timeout = timeout
        return conn

    def request(self, method: str, path: str, *, content: bytes | None = None,
                params: dict | None = None, headers: dict | None = None,
                timeout: float | None = None) -> Response:
        """One request; a kept-alive connection the server closed meanwhile is reopened and
        the request sent again (these calls are safe to repeat: they carry their ids)."""
        url = self.prefix + path + (f"?{urlencode(params)}" if params else "")
        for attempt in (1, 2):
            conn = self._connection(timeout or self.timeout)
            reused = conn.sock is not None
            try:
                conn.request(method, url, body=content, headers=headers or {})
                reply = conn.getresponse()
                data = reply.read()
            except (http.client.HTTPException, OSError) as exc:
                conn.close()
                if attempt == 1 and reused and not isinstance(exc, TimeoutError):
                    continue
                raise TransportError(f"{method} {path}: {exc}") from exc
            if reply.getheader("Connection", "").lower() == "close":
                conn.close()
            return Response(reply.status, reply.headers, data)
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
