"""The agent's client of the service's ``/v1/agent`` routes: HTTP, msgpack and error mapping.

The agent only needs to tell three outcomes apart: an answer, "try again later"
(:class:`ServiceUnavailable`: unreachable, 5xx, 408, 429) and "another agent took over"
(:class:`SessionReplaced`: 409). Anything else is a :class:`fedcompute.errors.ServiceError`.
"""

from __future__ import annotations

from typing import Any

import httpx
from fedcompute import errors, http
from fedcompute.fasthttp import FastHTTP, TransportError, usable_for
from fedcompute.protocol import API_VERSION, MSGPACK, packb

_RETRY_LATER = (408, 429)


class ServiceUnavailable(Exception):
    """The service could not be reached or answered 5xx; try again later."""


class SessionReplaced(Exception):
    """Another agent for this endpoint connected; this one must stop."""


class ServiceAPI:
    """One agent session's calls (``session`` goes with every request)."""

    def __init__(self, service_url: str, credential: str, session: str,
                 verify: bool | str = True, timeout: float = 60.0):
        self.service_url = service_url.rstrip("/")
        self.session = session
        base = f"{self.service_url}/{API_VERSION}/agent"
        self.headers = {"Authorization": f"Bearer {credential}", "Accept": MSGPACK,
                        "Content-Type": MSGPACK}
        # Every request of the agent is on the hot path: the lean client unless a proxy applies.
        self.fast = FastHTTP(base, verify, timeout) if usable_for(base) else None
        self.http = httpx.Client(base_url=base, headers=self.headers,
                                 timeout=httpx.Timeout(timeout, connect=10.0), verify=verify)

    def post(self, path: str, body: dict[str, Any], timeout: float = 60.0) -> Any:
        """POST ``body`` (plus the session) to ``path``; the decoded answer."""
        content = packb({"session": self.session, **body})
        try:
            if self.fast is not None:
                response = self.fast.request("POST", path, content=content,
                                             headers=self.headers, timeout=timeout)
            else:
                response = self.http.post(path, content=content, timeout=timeout)
        except (httpx.HTTPError, TransportError) as exc:
            raise ServiceUnavailable(f"{path}: {exc}") from exc
        if response.status_code >= 500 or response.status_code in _RETRY_LATER:
            raise ServiceUnavailable(f"{path}: HTTP {response.status_code}")
        try:
            return http.decode(response)
        except errors.ServiceError as exc:
            if exc.status == 409:
                raise SessionReplaced(exc.message) from exc
            raise

    # --- the routes ----------------------------------------------------------------------

    def connect(self, status: dict, versions: dict) -> dict:
        return self.post("/connect", {"status": status, "versions": versions})

    def lease(self, max_tasks: int, wait: float, cached_functions: list[str],
              recover: bool = False, timeout: float = 60.0, status: dict | None = None) -> dict:
        body = {"max_tasks": max_tasks, "wait": wait, "cached_functions": cached_functions,
                "recover": recover}
        if status is not None:
            body["status"] = status
        return self.post("/lease", body, timeout=timeout)

    def results(self, results: list[dict]) -> dict:
        return self.post("/results", {"results": results})

    def heartbeat(self, status: dict) -> dict:
        return self.post("/heartbeat", {"status": status})

    def mark(self, state: str, task_ids: list[str], workers: dict | None = None) -> dict:
        body: dict[str, Any] = {"state": state, "task_ids": task_ids}
        if workers:
            body["workers"] = workers
        return self.post("/tasks/state", body)

    def output(self, batches: list[dict]) -> dict:
        """Live output batches of running tasks (``runner.LiveOutput``)."""
        return self.post("/tasks/output", {"batches": batches})

    def release(self, task_ids: list[str], disconnect: bool = False) -> dict:
        return self.post("/release", {"task_ids": task_ids, "disconnect": disconnect})

    def close(self) -> None:
        self.http.close()
        if self.fast is not None:
            self.fast.close()
