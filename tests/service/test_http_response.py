"""The API's gunicorn response writes a response's head with its first body block.

Unit tests against gunicorn's own ``Response`` (same bytes on the wire, fewer sends), then the
real service: a request's whole reply arrives in one segment.
"""

from __future__ import annotations

import socket
import types
import urllib.parse

import pytest
from fedcompute.service.http_response import CoalescingResponse
from gunicorn import util
from gunicorn.config import Config
from gunicorn.http import wsgi


class RecordingSocket:
    def __init__(self) -> None:
        self.sends: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.sends.append(bytes(data))


def request(method: str = "GET", version: tuple[int, int] = (1, 1)) -> types.SimpleNamespace:
    return types.SimpleNamespace(method=method, version=version, should_close=lambda: False)


def respond(cls, req, status: str, headers: list[tuple[str, str]], blocks: list[bytes]):
    sock = RecordingSocket()
    resp = cls(req, sock, Config())
    resp.start_response(status, headers)
    for block in blocks:
        resp.write(block)
    resp.close()
    return sock.sends


@pytest.fixture(autouse=True)
def fixed_date(monkeypatch):
    monkeypatch.setattr(util, "http_date", lambda *a: "Sun, 06 Dec 2026 20:00:00 GMT")


CASES = {
    "json": ("200 OK", [("Content-Type", "application/json"), ("Content-Length", "11")],
             [b'{"ok":true}']),
    "several blocks": ("200 OK", [("Content-Length", "6")], [b"ab", b"cd", b"ef"]),
    "empty first block": ("200 OK", [("Content-Length", "2")], [b"", b"ok"]),
    "chunked": ("200 OK", [("Content-Type", "text/plain")], [b"one", b"two"]),
    "no content": ("204 No Content", [], [b""]),
    "no body at all": ("200 OK", [("Content-Length", "0")], []),
}


@pytest.mark.parametrize("case", CASES)
def test_the_same_bytes_as_gunicorns_response(case):
    status, headers, blocks = CASES[case]
    ours = respond(CoalescingResponse, request(), status, headers, blocks)
    theirs = respond(wsgi.Response, request(), status, headers, blocks)
    assert b"".join(ours) == b"".join(theirs)
    assert len(ours) <= len(theirs)


def test_head_and_body_go_in_one_send():
    status, headers, blocks = CASES["json"]
    sends = respond(CoalescingResponse, request(), status, headers, blocks)
    assert len(sends) == 1
    head, _, body = sends[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and body == blocks[0]


def test_later_blocks_and_chunks_go_as_gunicorn_sends_them():
    sends = respond(CoalescingResponse, request(), *CASES["several blocks"])
    assert [s.rpartition(b"\r\n\r\n")[2] for s in sends] == [b"ab", b"cd", b"ef"]
    # Chunked framing keeps gunicorn's path: the head first, then each chunk.
    chunked = respond(CoalescingResponse, request(), *CASES["chunked"])
    assert chunked[0].endswith(b"\r\n\r\n") and chunked[1] == b"3\r\none\r\n"


def test_head_requests_send_the_head_once_and_no_body():
    sends = respond(CoalescingResponse, request("HEAD"), "200 OK",
                    [("Content-Length", "5")], [b"hello"])
    assert len(sends) == 1 and sends[0].endswith(b"\r\n\r\n")


def test_the_service_answers_in_one_segment(fed_stack):
    """The running API uses it: a keep-alive request's whole reply comes in one read."""
    url = urllib.parse.urlsplit(fed_stack.service_url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        for _ in range(3):
            sock.sendall(f"GET /v1/version HTTP/1.1\r\nHost: {url.netloc}\r\n\r\n".encode())
            reply = sock.recv(65536)
            head, _, body = reply.partition(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            assert head.startswith(b"HTTP/1.1 200") and len(body) == length > 0
