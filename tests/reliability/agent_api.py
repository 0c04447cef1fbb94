"""A scripted endpoint agent speaking the agent API directly, so the tests can lose replies,
go silent or deliver results twice at exactly the moment they choose."""

from __future__ import annotations

import socket
import uuid
from typing import Any
from urllib.parse import urlsplit

import httpx
from fedcompute.protocol import MSGPACK, packb, unpackb


class FakeAgent:
    """One agent session of a registered endpoint (``credential`` from ``register_endpoint``)."""

    def __init__(self, service_url: str, credential: str, session: str | None = None):
        self.service_url = service_url
        self.credential = credential
        self.session = session or uuid.uuid4().hex
        self.http = httpx.Client(
            base_url=f"{service_url}/v1/agent", timeout=60,
            headers={"Authorization": f"Bearer {credential}", "Accept": MSGPACK,
                     "Content-Type": MSGPACK})

    def post(self, path: str, body: dict) -> httpx.Response:
        return self.http.post(path, content=packb({"session": self.session, **body}))

    def call(self, path: str, body: dict | None = None) -> Any:
        response = self.post(path, body or {})
        assert response.status_code == 200, (path, response.status_code, response.content)
        return unpackb(response.content)

    def connect(self) -> dict:
        return self.call("/connect", {"status": {"workers": 1}})

    def lease(self, max_tasks: int = 100, wait: float = 0, recover: bool = False) -> dict:
        return self.call("/lease", {"max_tasks": max_tasks, "wait": wait, "recover": recover})

    def results(self, results: list[dict]) -> dict:
        return self.call("/results", {"results": results})

    def heartbeat(self) -> dict:
        return self.call("/heartbeat", {"status": {"workers": 1}})

    def lease_and_drop_reply(self, max_tasks: int = 100) -> None:
        """Send a lease request and hang up without reading the reply: the service leases the
        tasks, but the reply is lost (as when the agent's request times out or a proxy dies)."""
        url = urlsplit(self.service_url)
        body = packb({"session": self.session, "max_tasks": max_tasks, "wait": 0})
        head = (f"POST /v1/agent/lease HTTP/1.1\r\nHost: {url.netloc}\r\n"
                f"Authorization: Bearer {self.credential}\r\nContent-Type: {MSGPACK}\r\n"
                f"Accept: {MSGPACK}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        with socket.create_connection((url.hostname, url.port)) as sock:
            sock.sendall(head.encode() + body)
            sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.http.close()


def success(task_id: str, value: bytes) -> dict:
    return {"task_id": task_id, "status": "success", "result": value}
