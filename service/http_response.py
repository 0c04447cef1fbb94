"""gunicorn's HTTP/1 response, writing a response's head and its first body block in one send.

gunicorn sends the status line and headers, then each body block, as separate ``sendall``
calls. The API's responses are one small JSON block, so that is two system calls, two trips
through gevent's hub and, on the client, often two reads, per request: measured at about a
sixth of the API's CPU per sequential task. Chunked bodies and ``sendfile`` keep gunicorn's
own path.
"""

from __future__ import annotations

from gunicorn import util
from gunicorn.http import wsgi


class CoalescingResponse(wsgi.Response):
    """A :class:`gunicorn.http.wsgi.Response` that holds the head back for the first body block."""

    _head: bytes | None = None
    _hold_head = False

    def send_headers(self) -> None:
        if self.headers_sent or not self._hold_head:
            super().send_headers()
            return
        lines = self.default_headers()
        lines.extend(f"{k}: {v}\r\n" for k, v in self.headers)
        self._head = util.to_bytestring("".join(lines) + "\r\n", "latin-1")
        self.headers_sent = True

    def write(self, arg: bytes) -> None:
        first = not self.headers_sent
        self._hold_head = first and not self.chunked
        try:
            super().write(arg)
        finally:
            self._hold_head = False
            if first:
                self._flush_head()  # nothing was written with it (an empty or dropped block)

    def _emit_body(self, data: bytes) -> None:
        head, self._head = self._head, None
        if head is None:
            super()._emit_body(data)
        else:
            self.sock.sendall(head + data)

    def _flush_head(self) -> None:
        head, self._head = self._head, None
        if head is not None:
            self.sock.sendall(head)


def install() -> None:
    """Make gunicorn build HTTP/1 responses as :class:`CoalescingResponse` in this process.

    ``wsgi.create`` looks the class up at each request and the workers pass none of their own
    for HTTP/1, so replacing the module's name is the one hook there is.
    """
    wsgi.Response = CoalescingResponse
