"""``fedcompute.Client``: the HTTP client of the service, named like Globus Compute's.

Longer than our ~400-line guide on purpose: it is one public class whose methods mirror
Globus Compute's ``Client`` one route each (functions, endpoints, tasks, batches, task groups,
sharing); splitting it would scatter that surface over mixins for no reuse. What is shared
lives elsewhere: decoding and errors in ``http.py``, the hot path in ``fasthttp.py``,
submission in ``submission.py``."""

from __future__ import annotations

import inspect
import json
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

from . import errors, serialize
from .config import FileTokenStore, load_credentials, service_url_of
from .fasthttp import FastHTTP, TransportError, usable_for
from .http import decode
from .oauth import RefreshingAuth
from .protocol import API_VERSION, MSGPACK, TaskState, packb
from .shell import run_hardware_report

#: A UUID or its string, as Globus Compute's SDK accepts for every id.
UUIDLike = uuid.UUID | str

_warned: set[str] = set()
_warned_lock = threading.Lock()


def warn_ignored(option: str, reason: str) -> None:
    """Warn once per process that a Globus Compute option is accepted but ignored."""
    with _warned_lock:
        if option in _warned:
            return
        _warned.add(option)
    warnings.warn(f"{option} is ignored by fedcompute: {reason}", errors.IgnoredOptionWarning,
                  stacklevel=3)


def as_uuid(value: UUIDLike, what: str = "id") -> uuid.UUID:
    """``value`` as a ``uuid.UUID``; ``ValueError`` naming ``what`` if it is not one."""
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise ValueError(f"{what} must be a UUID, got {value!r}") from None


def checked_options(value: dict | None, what: str) -> dict | None:
    """A copy of a ``resource_specification`` / ``user_endpoint_config``: a JSON-serializable
    dict or ``None`` (``TypeError`` otherwise, as in Globus Compute)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TypeError(f"{what} must be a dict, not {type(value).__name__}")
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} must be JSON-serializable: {exc}") from exc


class SourceFunction:
    """A function given as source text (``register_source_code``): on the endpoint the source
    runs as a fresh module, then its ``function_name`` is called with the task's arguments."""

    def __init__(self, source: str, function_name: str):
        if not function_name.isidentifier():
            raise ValueError(f"function_name must be a Python identifier, got {function_name!r}")
        self.source = source
        self.function_name = self.__name__ = function_name
        self._entry: Callable | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._entry is None:
            namespace: dict[str, Any] = {"__name__": f"fedcompute_source_{self.function_name}"}
            exec(compile(self.source, f"<source of {self.function_name}>", "exec"), namespace)
            if not callable(namespace.get(self.function_name)):
                raise NameError(f"the registered source defines no function "
                                f"{self.function_name!r}")
            self._entry = namespace[self.function_name]
        return self._entry(*args, **kwargs)

    def __getstate__(self) -> dict:
        return {"source": self.source, "function_name": self.function_name}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["source"], state["function_name"])

    def __repr__(self) -> str:
        return f"SourceFunction(function_name={self.function_name!r})"


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
    user_endpoint_config: dict | None = None

    def add(self, function_id: UUIDLike, args: Iterable | None = (),
            kwargs: dict | None = None) -> str:
        """Add a call of a registered function; returns the task id it will have."""
        if isinstance(args, str | bytes | dict):  # a common slip: add(fid, "x") or add(fid, {})
            raise TypeError(f"args: expected a tuple, got {type(args).__name__}")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise TypeError(f"kwargs: expected a dict, got {type(kwargs).__name__}")
        task_id = str(uuid.uuid4())
        task = {"task_id": task_id, "function_id": str(as_uuid(function_id, "function_id")),
                "payload": serialize.serialize_args(tuple(args or ()), dict(kwargs or {}))}
        if self.resource_specification:
            task["resource_specification"] = self.resource_specification
        if self.user_endpoint_config:
            task["options"] = {"user_endpoint_config": self.user_endpoint_config}
        self.tasks.append(task)
        return task_id

    def prepare(self) -> dict[str, Any]:
        """The request body ``Client.batch_run`` sends (with the endpoint id added)."""
        return {"task_group_id": str(self.task_group_id) if self.task_group_id else None,
                "tasks": self.tasks}

    def __len__(self) -> int:
        return len(self.tasks)


class Client:
    """Talks to a fedcompute service.

    ``service_url`` and ``token`` default to ``FEDCOMPUTE_SERVICE_URL`` / ``FEDCOMPUTE_TOKEN``,
    then to the file ``fedcompute login`` writes. Certificates are verified unless
    ``verify=False`` (or a CA bundle path) is given.

    After ``fedcompute login --oidc`` the client refreshes its access token by itself (before
    it expires, and once on a 401), so long runs outlive their tokens. ``auth=`` takes any
    ``httpx.Auth`` instead, e.g. ``fedcompute.oauth.RefreshingAuth.from_refresh_token(...)``.
    """

    def __init__(self, service_url: str | None = None, token: str | None = None, *,
                 timeout: float = 60.0, verify: bool | str = True, retries: int = 5,
                 do_version_check: bool = False, environment: str | None = None,
                 local_compute_services: bool = False, app: Any = None, authorizer: Any = None,
                 code_serialization_strategy: Any = None,
                 data_serialization_strategy: Any = None, auth: httpx.Auth | None = None):
        # Globus Compute's service selection, Globus Auth and serializer choices: fedcompute
        # has its own service URL and token, and one serializer.
        for option, value in (("environment", environment), ("app", app),
                              ("authorizer", authorizer),
                              ("local_compute_services", local_compute_services),
                              ("code_serialization_strategy", code_serialization_strategy),
                              ("data_serialization_strategy", data_serialization_strategy)):
            if value:
                warn_ignored(f"Client({option}=...)", "fedcompute uses its service URL and "
                             "token (FEDCOMPUTE_SERVICE_URL / FEDCOMPUTE_TOKEN or `fedcompute "
                             "login`) and always serializes with cloudpickle")
        if auth is not None and token is None:
            self.service_url = service_url_of(service_url)
            self._token = ""
        else:
            creds = load_credentials(service_url, token)
            self.service_url = creds.service_url
            self._token = creds.token
            if creds.oauth is not None:
                auth = RefreshingAuth(creds.oauth, FileTokenStore(creds.service_url), verify)
        #: The ``httpx.Auth`` that refreshes the access token (None: a static token).
        self.auth = auth
        headers = {"Accept": MSGPACK}
        if auth is None:
            headers["Authorization"] = f"Bearer {self._token}"
        self.retries = retries
        self._http = httpx.Client(
            base_url=f"{self.service_url}/{API_VERSION}",
            headers=headers, auth=auth,
            timeout=httpx.Timeout(timeout, connect=10.0),
            verify=verify,
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
        )
        base = f"{self.service_url}/{API_VERSION}"
        #: The calls every task makes go through the lean client (see fasthttp.py).
        self._fast = FastHTTP(base, verify, timeout) if usable_for(base) else None
        self._function_ids: dict[tuple, str] = {}
        #: The task group of this client's batches unless they name another (``create_batch``).
        self.session_task_group_id = str(uuid.uuid4())
        if do_version_check:
            self.version_check()

    @property
    def token(self) -> str:
        """The bearer token this client sends now (refreshed first when it is about to
        expire); the Dask adapter asks again for each connection it opens."""
        token_of = getattr(self.auth, "token", None)
        return token_of() if callable(token_of) else self._token

    # --- plumbing ----------------------------------------------------------------------

    def _send_fast(self, method: str, path: str, content: bytes | None, params: dict | None,
                   timeout: float | None) -> Any:
        headers = {"Accept": MSGPACK, "Authorization": f"Bearer {self.token}"}
        if content is not None:
            headers["Content-Type"] = MSGPACK
        response = self._fast.request(method, path, content=content, params=params,
                                      headers=headers, timeout=timeout)
        if response.status_code == 401 and self.auth is not None:
            return None  # let httpx and the auth hook refresh the token and send it again
        return response

    def request(self, method: str, path: str, *, body: Any = None, params: dict | None = None,
                timeout: float | None = None, idempotent: bool | None = None,
                fast: bool = False) -> Any:
        """Send a request (msgpack both ways); retry connection failures of idempotent calls.
        ``fast``: through the lean client (the hot path), when it can be used."""
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
                response = None
                if fast and self._fast is not None:
                    response = self._send_fast(method, path, content, params, timeout)
                if response is None:
                    response = self._http.request(method, path, **kwargs)
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError,
                    httpx.WriteError, httpx.PoolTimeout, TransportError) as exc:
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
            return decode(response)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._http.close()
        if self._fast is not None:
            self._fast.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- identity ----------------------------------------------------------------------

    def whoami(self) -> dict:
        return self.request("GET", "/whoami")

    def version(self) -> dict:
        return self.request("GET", "/version")

    def version_check(self, endpoint_version: str | None = None) -> None:
        """Raise ``VersionMismatch`` unless the service speaks this SDK's API version (and,
        where the service states minimum versions, this SDK and ``endpoint_version`` meet
        them)."""
        from packaging.version import Version

        from . import __version__

        info = self.version()
        if info.get("api") != API_VERSION:
            raise errors.VersionMismatch(
                f"the service at {self.service_url} speaks API {info.get('api')!r}; this "
                f"fedcompute {__version__} speaks {API_VERSION!r}")
        for mine, key, who in ((__version__, "min_sdk_version", "this SDK"),
                               (endpoint_version, "min_endpoint_version", "the endpoint")):
            least = info.get(key)
            if mine is not None and least and Version(mine) < Version(least):
                raise errors.VersionMismatch(
                    f"{who} is fedcompute {mine}; the service needs at least {least}")

    # --- functions ---------------------------------------------------------------------

    def register_function(self, function: Callable, description: str | None = None,
                          metadata: dict | None = None, public: bool = False,
                          group: UUIDLike | None = None, ha_endpoint_id: UUIDLike | None = None,
                          *, function_name: str | None = None,
                          shared_with: list[str] | None = None,
                          shared_with_groups: list[str] | None = None) -> str:
        """Register a function (once per content; the same body gives the same id).

        As in Globus Compute, ``description`` defaults to the function's docstring.
        ``metadata`` is not needed (payloads carry their Python version). ``group`` shares
        the function with that group of the identity provider (``shared_with_groups=[group]``;
        a Globus group's UUID, a Keycloak group path, ...). ``ha_endpoint_id`` is accepted and
        ignored with a warning: restrict an endpoint with its ``allowed_functions``.
        """
        groups = list(shared_with_groups or [])
        if group is not None and str(group) not in groups:
            groups.append(str(group))
        if ha_endpoint_id is not None:
            warn_ignored("register_function(ha_endpoint_id=...)", "fedcompute has no "
                         "high-assurance endpoints (use the endpoint's allowed_functions)")
        if description is None:
            # A callable object's __doc__ is its class's: no description of this function.
            described = inspect.isroutine(function) or isinstance(function, type)
            description = (inspect.getdoc(function) if described else None) or ""
        name = function_name or getattr(function, "__name__", "function")
        body = serialize.serialize_function(function)
        key = (serialize.function_digest(body), name, description[:2000])
        cached = self._function_ids.get(key)
        if cached and not (public or shared_with or groups):
            return cached
        reply = self.request("POST", "/functions", body={
            "function_name": name, "function_body": body, "description": description[:2000],
            "public": public, "shared_with": shared_with or [], "shared_with_groups": groups,
        }, idempotent=True)
        self._function_ids[key] = reply["function_id"]
        return reply["function_id"]

    def register_source_code(self, source: str, function_name: str,
                             description: str | None = None, metadata: dict | None = None,
                             public: bool = False, group: UUIDLike | None = None,
                             ha_endpoint_id: UUIDLike | None = None, **options: Any) -> str:
        """Register Python source text whose ``function_name`` is the function to run; the
        endpoint runs the whole source (imports and all) before calling it."""
        return self.register_function(SourceFunction(source, function_name), description,
                                      metadata, public, group, ha_endpoint_id, **options)

    def get_function(self, function_id: str) -> dict:
        return self.request("GET", f"/functions/{function_id}")

    def delete_function(self, function_id: str) -> None:
        self.request("DELETE", f"/functions/{function_id}")

    def share_function(self, function_id: str, *, public: bool | None = None,
                       shared_with: list[str] | None = None,
                       shared_with_groups: list[str] | None = None) -> dict:
        """Change who may use your function (``None`` leaves a field as it is)."""
        return self.request("PATCH", f"/functions/{function_id}",
                            body={"public": public, "shared_with": shared_with,
                                  "shared_with_groups": shared_with_groups}, idempotent=True)

    # --- endpoints ---------------------------------------------------------------------

    def register_endpoint(self, name: str, endpoint_id: str | None = None, *,
                          public: bool = False, shared_with: list[str] | None = None,
                          allowed_functions: list[str] | None = None,
                          metadata: dict | None = None,
                          shared_with_groups: list[str] | None = None) -> dict:
        """Register (or re-register) an endpoint; returns its id and a new credential (the
        old one is refused at once). ``shared_with_groups=None`` keeps its groups."""
        body = {"name": name, "endpoint_id": endpoint_id, "public": public,
                "shared_with": shared_with or [], "allowed_functions": allowed_functions,
                "metadata": metadata or {}}
        if shared_with_groups is not None:
            body["shared_with_groups"] = shared_with_groups
        return self.request("POST", "/endpoints", body=body, idempotent=True)

    def get_endpoints(self, role: str | None = None) -> list[dict]:
        """Endpoints you may use; ``role="owner"``: only your own, ``"any"``: all (default)."""
        listed = self.request("GET", "/endpoints", params={"role": role} if role else None)
        return [{**record, "uuid": record["endpoint_id"]} for record in listed]

    def get_endpoint_status(self, endpoint_id: UUIDLike) -> dict:
        return self.request("GET", f"/endpoints/{endpoint_id}/status")

    def get_endpoint_metadata(self, endpoint_id: UUIDLike) -> dict:
        """What the service knows of an endpoint: name, owner, sharing, status, and what the
        endpoint reports of itself (``details``: engine, workers, versions)."""
        record = self.request("GET", f"/endpoints/{endpoint_id}")
        details = self.get_endpoint_status(endpoint_id).get("details") or {}
        versions = details.get("versions") or {}
        return {"uuid": record["endpoint_id"], **record, "details": details,
                "endpoint_version": versions.get("fedcompute"),
                "python_version": versions.get("python"), "hostname": details.get("hostname")}

    def get_allowed_functions(self, endpoint_id: UUIDLike) -> dict:
        """``{"endpoint_id", "restricted", "functions"}``: the functions the endpoint allows
        (``restricted`` is false, and ``functions`` empty, when it runs any function)."""
        record = self.request("GET", f"/endpoints/{endpoint_id}")
        allowed = record.get("allowed_functions")
        return {"endpoint_id": record["endpoint_id"], "restricted": allowed is not None,
                "functions": list(allowed or [])}

    def get_worker_hardware_details(self, endpoint_id: UUIDLike) -> str:
        """Start a hardware report on one of the endpoint's workers; returns its task id
        (``get_result`` gives the report's text)."""
        function_id = self.register_function(run_hardware_report)
        return self.run("fedcompute endpoint worker", endpoint_id=endpoint_id,
                        function_id=function_id)

    def update_endpoint(self, endpoint_id: str, **changes: Any) -> dict:
        return self.request("PATCH", f"/endpoints/{endpoint_id}", body=changes, idempotent=True)

    def delete_endpoint(self, endpoint_id: str) -> None:
        self.request("DELETE", f"/endpoints/{endpoint_id}")

    # --- tasks -------------------------------------------------------------------------

    def submit_tasks(self, endpoint_id: UUIDLike, tasks: list[dict],
                     task_group_id: UUIDLike | None = None) -> dict:
        """Send prepared task dicts in one request. Safe to retry: task ids are ours."""
        return self.request("POST", "/tasks", body={
            "endpoint_id": str(endpoint_id),
            "task_group_id": str(task_group_id) if task_group_id else None, "tasks": tasks,
        }, idempotent=True, fast=True)

    def run(self, *args: Any, endpoint_id: UUIDLike, function_id: UUIDLike,
            **kwargs: Any) -> str:
        """Run a registered function once; returns the task id."""
        batch = self.create_batch()
        task_id = batch.add(function_id, args, kwargs)
        self.batch_run(endpoint_id, batch)
        return task_id

    def create_batch(self, task_group_id: UUIDLike | None = None,
                     resource_specification: dict | None = None,
                     user_endpoint_config: dict | None = None,
                     create_websocket_queue: bool = False,
                     result_serializers: list[str] | None = None) -> Batch:
        """A new :class:`Batch`, in ``session_task_group_id`` unless another group is named.

        ``resource_specification`` and ``user_endpoint_config`` go with each of its tasks.
        ``create_websocket_queue`` and ``result_serializers`` belong to Globus Compute's result
        transport and serializers; they are ignored with a warning.
        """
        if create_websocket_queue:
            warn_ignored("create_batch(create_websocket_queue=...)",
                         "results stream to any Executor of the task group without a queue")
        if result_serializers:
            warn_ignored("create_batch(result_serializers=...)",
                         "endpoints always serialize results with cloudpickle")
        group = str(as_uuid(task_group_id, "task_group_id")) if task_group_id \
            else self.session_task_group_id
        return Batch(group, checked_options(resource_specification, "resource_specification"),
                     user_endpoint_config=checked_options(user_endpoint_config,
                                                          "user_endpoint_config"))

    def batch_run(self, endpoint_id: UUIDLike, batch: Batch) -> dict:
        """Submit a batch; returns ``{"task_group_id", "endpoint_id", "tasks": {function_id:
        [task_id, ...]}}``."""
        if not batch.tasks:
            raise ValueError("No tasks specified for batch run")
        reply = self.submit_tasks(endpoint_id, batch.tasks, batch.task_group_id)
        batch.task_group_id = reply["task_group_id"]
        by_function: dict[str, list[str]] = {}
        for task in batch.tasks:
            by_function.setdefault(task["function_id"], []).append(task["task_id"])
        return {"task_group_id": reply["task_group_id"], "endpoint_id": str(endpoint_id),
                "tasks": by_function}

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

    def get_batch_result(self, task_ids: list[UUIDLike]) -> dict[str, dict]:
        """Status and outcome of many tasks in one request each 5,000."""
        return {tid: self._present(rec) if rec else {"task_id": tid, "status": "unknown",
                                                       "pending": True}
                for tid, rec in self.get_task_records([str(t) for t in task_ids]).items()}

    def cancel_task(self, task_id: str) -> str:
        """Cancel a task, even a running one (stopped at the endpoint); returns its status
        afterwards: ``cancelled``, ``cancelling`` (being stopped at the endpoint), or the
        state of a task that has ended already."""
        return self.request("POST", f"/tasks/{task_id}/cancel", idempotent=True)["status"]

    def cancel_tasks(self, task_ids: list[str]) -> dict[str, str]:
        """Cancel many tasks (one request per 10,000); task id -> its status afterwards."""
        out: dict[str, str] = {}
        for i in range(0, len(task_ids), 10_000):
            reply = self.request("POST", "/tasks/cancel",
                                 body={"task_ids": [str(t) for t in task_ids[i:i + 10_000]]},
                                 idempotent=True)
            out.update(reply["tasks"])
        return out

    def cancel_task_group(self, task_group_id: UUIDLike) -> dict[str, int]:
        """Cancel every unfinished task of a task group; how many ended in each state."""
        return self.request("POST", f"/task_groups/{task_group_id}/cancel",
                            idempotent=True)["states"]

    def get_task_group(self, task_group_id: str) -> list[str]:
        return self.request("GET", f"/task_groups/{task_group_id}")["task_ids"]

    def results_page(self, task_group_id: str, cursor: str = "0", wait: float = 20.0,
                     limit: int = 5000, events: bool = False) -> dict:
        """One long-poll of a task group's result stream (used by ``Executor``); with
        ``events`` also its state events (tasks leased, waiting for nodes, running)."""
        params: dict[str, Any] = {"cursor": cursor, "wait": wait, "limit": limit}
        if events:
            params["events"] = "1"
        return self.request("GET", f"/task_groups/{task_group_id}/results", params=params,
                            timeout=wait + 30, fast=True)
