"""``fedcompute.Client``: the HTTP client of the service, named like Globus Compute's."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

from . import errors, serialize
from .config import load_credentials
from .protocol import API_VERSION, JSON, MSGPACK, TaskState, packb, unpackb

_STATUS_ERRORS: dict[int, type[errors.ServiceError]] = {
    401: errors.AuthError,
    403: errors.ForbiddenError,
    404: errors.NotFoundError,
    413: errors.PayloadTooLarge,
}


def decode_outcome(record: dict) -> tuple[bool, Any]:
    """``(ok, value)`` of a finished task record: the result, or the exception to raise."""
    if record["status"] == TaskState.SUCCESS.value:
        return True, serialize.loads(record["result"])
    if record["status"] == TaskState.CANCELLED.value:
        return False, errors.TaskCancelled(f"task {record['task_id']} was cancelled")
    envelope = record.get("exception") or {"type": "fedcompute.errors.TaskExecutionFailed"}
    return False, serialize.unpack_exception(envelope)


@dataclass
class Batch:
    """A set of tasks sent in one request (``Client.create_batch`` / ``Client.batch_run``)."""

    task_group_id: str | None = None
    resource_specification: dict | None = None
    tasks: list[dict] = field(default_factory=list)

    def add(self, function_id: str, args: Iterable = (), kwargs: dict | None = None) -> str:
        """Add a call of a registered function; returns the task id it will have."""
        task_id = str(uuid.uuid4())
        task = {"task_id": task_id, "function_id": function_id,
                "payload": serialize.serialize_args(tuple(args), dict(kwargs or {}))}
        if self.resource_specification:
            task["resource_specification"] = self.resource_specification
        self.tasks.append(task)
        return task_id


class Client:
    """Talks to a fedcompute service.

    ``service_url`` and ``token`` default to ``FEDCOMPUTE_SERVICE_URL`` / ``FEDCOMPUTE_TOKEN``,
    then to the file ``fedcompute login`` writes. Certificates are verified unless
    ``verify=False`` (or a CA bundle path) is given.
    """

    def __init__(self, service_url: str | None = None, token: str | None = None, *,
                 timeout: float = 60.0, verify: bool | str = True, retries: int = 5):
        creds = load_credentials(service_url, token)
        self.service_url = creds.service_url
        self._token = creds.token
        self.retries = retries
        self._http = httpx.Client(
            base_url=f"{self.service_url}/{API_VERSION}",
            headers={"Authorization": f"Bearer {self._token}", "Accept": MSGPACK},
            timeout=httpx.Timeout(timeout, connect=10.0),
            verify=verify,
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
        )
        self._function_ids: dict[str, str] = {}

    @property
    def token(self) -> str:
        """The bearer token this client sends (the Dask adapter reuses it)."""
        return self._token

    # --- plumbing ----------------------------------------------------------------------

    def request(self, method: str, path: str, *, body: Any = None, params: dict | None = None,
                timeout: float | None = None, idempotent: bool | None = None) -> Any:
        """Send a request (msgpack both ways); retry connection failures of idempotent calls."""
        content = packb(body) if body is not None else None
        headers = {"Content-Type": MSGPACK} if body is not None else None
        if idempotent is None:
            idempotent = method in ("GET", "PUT", "DELETE")
        kwargs: dict[str, Any] = {"content": content, "params": params, "headers": headers}
        if timeout is not None:
            kwargs["timeout"] = httpx.Timeout(timeout, connect=10.0)
        delay = 0.2
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(method, path, **kwargs)
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError,
                    httpx.WriteError, httpx.PoolTimeout) as exc:
                if not idempotent or attempt == self.retries:
                    raise errors.ServiceError(0, f"cannot reach {self.service_url}: {exc}") from exc
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if response.status_code == 429 and attempt < self.retries:
                time.sleep(float(response.headers.get("Retry-After", "1")))
                continue
            if response.status_code in (502, 503, 504) and idempotent and attempt < self.retries:
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            return self._decode(response)
        raise AssertionError("unreachable")

    @staticmethod
    def _decode(response: httpx.Response) -> Any:
        ctype = response.headers.get("Content-Type", "")
        if ctype.startswith(MSGPACK):
            data = unpackb(response.content)
        elif ctype.startswith(JSON):
            data = response.json()
        else:
            data = response.content
        if response.status_code < 400:
            return data
        message = data.get("message", str(data)) if isinstance(data, dict) else str(data)
        code = data.get("error") if isinstance(data, dict) else None
        if response.status_code == 429:
            raise errors.RateLimited(429, message, code,
                                     float(response.headers.get("Retry-After", "1")))
        cls = _STATUS_ERRORS.get(response.status_code, errors.ServiceError)
        raise cls(response.status_code, message, code)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- identity ----------------------------------------------------------------------

    def whoami(self) -> dict:
        return self.request("GET", "/whoami")

    def version(self) -> dict:
        return self.request("GET", "/version")

    # --- functions ---------------------------------------------------------------------

    def register_function(self, function: Callable, function_name: str | None = None,
                          description: str = "", public: bool = False,
                          shared_with: list[str] | None = None) -> str:
        """Register a function (once per content; the same body gives the same id)."""
        body = serialize.serialize_function(function)
        key = serialize.function_digest(body)
        cached = self._function_ids.get(key)
        if cached and not (public or shared_with):
            return cached
        reply = self.request("POST", "/functions", body={
            "function_name": function_name or getattr(function, "__name__", "function"),
            "function_body": body, "description": description or (function.__doc__ or "")[:2000],
            "public": public, "shared_with": shared_with or [],
        }, idempotent=True)
        self._function_ids[key] = reply["function_id"]
        return reply["function_id"]

    def get_function(self, function_id: str) -> dict:
        return self.request("GET", f"/functions/{function_id}")

    def delete_function(self, function_id: str) -> None:
        self.request("DELETE", f"/functions/{function_id}")

    def share_function(self, function_id: str, *, public: bool | None = None,
                       shared_with: list[str] | None = None) -> dict:
        return self.request("PATCH", f"/functions/{function_id}",
                            body={"public": public, "shared_with": shared_with}, idempotent=True)

    # --- endpoints ---------------------------------------------------------------------

    def register_endpoint(self, name: str, endpoint_id: str | None = None, *,
                          public: bool = False, shared_with: list[str] | None = None,
                          allowed_functions: list[str] | None = None,
                          metadata: dict | None = None) -> dict:
        """Register (or re-register) an endpoint; returns its id and a new credential."""
        return self.request("POST", "/endpoints", body={
            "name": name, "endpoint_id": endpoint_id, "public": public,
            "shared_with": shared_with or [], "allowed_functions": allowed_functions,
            "metadata": metadata or {},
        }, idempotent=True)

    def get_endpoints(self) -> list[dict]:
        return self.request("GET", "/endpoints")

    def get_endpoint_status(self, endpoint_id: str) -> dict:
        return self.request("GET", f"/endpoints/{endpoint_id}/status")

    def update_endpoint(self, endpoint_id: str, **changes: Any) -> dict:
        return self.request("PATCH", f"/endpoints/{endpoint_id}", body=changes, idempotent=True)

    def delete_endpoint(self, endpoint_id: str) -> None:
        self.request("DELETE", f"/endpoints/{endpoint_id}")

    # --- tasks -------------------------------------------------------------------------

    def submit_tasks(self, endpoint_id: str, tasks: list[dict],
                     task_group_id: str | None = None) -> dict:
        """Send prepared task dicts in one request. Safe to retry: task ids are ours."""
        return self.request("POST", "/tasks", body={
            "endpoint_id": endpoint_id, "task_group_id": task_group_id, "tasks": tasks,
        }, idempotent=True)

    def run(self, *args: Any, endpoint_id: str, function_id: str, **kwargs: Any) -> str:
        """Run a registered function once; returns the task id."""
        batch = self.create_batch()
        task_id = batch.add(function_id, args, kwargs)
        self.batch_run(endpoint_id, batch)
        return task_id

    def create_batch(self, task_group_id: str | None = None,
                     resource_specification: dict | None = None) -> Batch:
        return Batch(task_group_id, resource_specification)

    def batch_run(self, endpoint_id: str, batch: Batch) -> dict:
        """Submit a batch; returns ``{"task_group_id", "tasks": {function_id: [task_id, ...]}}``."""
        reply = self.submit_tasks(endpoint_id, batch.tasks, batch.task_group_id)
        batch.task_group_id = reply["task_group_id"]
        by_function: dict[str, list[str]] = {}
        for task in batch.tasks:
            by_function.setdefault(task["function_id"], []).append(task["task_id"])
        return {"task_group_id": reply["task_group_id"], "tasks": by_function}

    def get_task_record(self, task_id: str) -> dict:
        return self.request("GET", f"/tasks/{task_id}")

    def get_task(self, task_id: str) -> dict:
        """Status, timestamps and (when done) the result or exception of a task."""
        return self._present(self.get_task_record(task_id))

    @staticmethod
    def _present(record: dict) -> dict:
        info = {k: record.get(k) for k in ("task_id", "status", "function_id", "endpoint_id",
                                           "task_group_id", "attempts", "timestamps")}
        info["pending"] = not record.get("completed")
        if record.get("completed"):
            ok, value = decode_outcome(record)
            info["result" if ok else "exception"] = value
            info["completion_t"] = record["timestamps"].get("completed")
        for stream in ("stdout", "stderr"):
            if record.get(stream) is not None:
                info[stream] = record[stream]
        return info

    def get_result(self, task_id: str) -> Any:
        """The task's result; raises its exception, or ``TaskPending`` if it has not finished."""
        record = self.get_task_record(task_id)
        if not record.get("completed"):
            raise errors.TaskPending(task_id, record["status"])
        ok, value = decode_outcome(record)
        if ok:
            return value
        raise value

    def get_task_records(self, task_ids: list[str]) -> dict[str, dict | None]:
        out: dict[str, dict | None] = {}
        for i in range(0, len(task_ids), 5000):
            reply = self.request("POST", "/tasks/get", body={"task_ids": task_ids[i:i + 5000]},
                                 idempotent=True)
            out.update(reply["tasks"])
        return out

    def get_batch_result(self, task_ids: list[str]) -> dict[str, dict]:
        """Status and outcome of many tasks in one request each 5,000."""
        return {tid: self._present(rec) if rec else {"task_id": tid, "status": "unknown",
                                                       "pending": True}
                for tid, rec in self.get_task_records(list(task_ids)).items()}

    def cancel_task(self, task_id: str) -> str:
        """Cancel a task that has not started; returns its status afterwards."""
        return self.request("POST", f"/tasks/{task_id}/cancel", idempotent=True)["status"]

    def get_task_group(self, task_group_id: str) -> list[str]:
        return self.request("GET", f"/task_groups/{task_group_id}")["task_ids"]

    def results_page(self, task_group_id: str, cursor: str = "0", wait: float = 20.0,
                     limit: int = 5000) -> dict:
        """One long-poll of a task group's result stream (used by ``Executor``)."""
        return self.request("GET", f"/task_groups/{task_group_id}/results",
                            params={"cursor": cursor, "wait": wait, "limit": limit},
                            timeout=wait + 30)
