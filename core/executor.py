"""``fedcompute.Executor``: a ``concurrent.futures.Executor`` that runs on an endpoint.

Submissions are queued and sent in batches by one background thread; one more thread
long-polls the task group's result stream and resolves futures as results arrive, so the cost
per task is a few microseconds of local work and a share of one HTTP request.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import copy
import logging
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from . import errors, serialize
from .client import Client, UUIDLike, as_uuid, checked_options, decode_outcome, warn_ignored
from .shell import run_hardware_report

log = logging.getLogger(__name__)

#: Executors whose background threads run: flushed at interpreter exit (see _flush_at_exit).
_live: weakref.WeakSet[Executor] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    """Fire and forget: a script that submits and exits must not lose the tasks still queued
    in memory, which only the (daemon) submission thread sends. Runs while daemon threads
    still run; results are not waited for."""
    for executor in list(_live):
        executor.flush()


#: Upper bound of one submission request's payload bytes (the service's default limit is 64 MiB).
MAX_REQUEST_BYTES = 16 * 1024 * 1024


class ComputeFuture(concurrent.futures.Future):
    """A future for a remote task. ``task_id`` is known as soon as ``submit`` returns."""

    def __init__(self, task_id: str, executor: Executor | None = None):
        super().__init__()
        self.task_id = task_id
        self.stdout: str | None = None
        self.stderr: str | None = None
        self._executor = executor

    def cancel(self) -> bool:
        """Cancel locally if unsent, else ask the service (only tasks not yet started)."""
        if self.done():
            return self.cancelled()
        executor = self._executor
        if executor is not None and not executor._cancel_remote(self):
            return False
        self.cancel_local()
        return True

    def cancel_local(self) -> None:
        """Mark cancelled and wake ``wait``/``as_completed`` waiters (no remote call)."""
        with self._condition:  # the result poller may cancel it at the same moment
            if super().cancel() and self._state == "CANCELLED":
                self.set_running_or_notify_cancel()

    def __repr__(self) -> str:
        return f"<ComputeFuture task_id={self.task_id} state={self._state}>"


class Executor(concurrent.futures.Executor):
    """Run Python functions on a fedcompute endpoint.

    ``Executor(endpoint_id=...)`` uses ``Client()`` (environment or ``fedcompute login``) unless
    ``client`` is given. Futures of one executor share a task group; ``reload_tasks`` reattaches
    to a group's tasks from another process.

    The arguments are Globus Compute's, in its order: ``resource_specification`` and
    ``user_endpoint_config`` go with every task (read and set them as attributes), ``label``
    names the executor, ``batch_size`` caps the tasks per request. ``api_burst_limit`` /
    ``api_burst_window_s``, when given, allow at most that many submission requests per window
    (by default only the service's rate limit applies). ``amqp_port``, ``serializer`` and
    ``result_serializers`` belong to Globus Compute's transport and serializers: accepted and
    ignored with a warning. ``capture_output`` and ``poll_wait`` are fedcompute's own.
    """

    def __init__(self, endpoint_id: UUIDLike | None = None, client: Client | None = None,
                 task_group_id: UUIDLike | None = None,
                 resource_specification: dict | None = None,
                 user_endpoint_config: dict | None = None, label: str = "",
                 batch_size: int = 2000, amqp_port: int | None = None,
                 api_burst_limit: int | None = None, api_burst_window_s: int | None = None,
                 serializer: Any = None, result_serializers: Iterable | None = None, *,
                 capture_output: bool = False, poll_wait: float = 20.0):
        self.endpoint_id = endpoint_id
        self.client = client or Client()
        self._cursor = "0"
        self.task_group_id = task_group_id or uuid.uuid4()
        self.batch_size = max(1, batch_size)
        self.resource_specification = resource_specification
        self.user_endpoint_config = user_endpoint_config
        self.label = label
        self.amqp_port = amqp_port
        if amqp_port is not None:
            warn_ignored("Executor(amqp_port=...)", "results come over the service's HTTPS "
                         "long-poll, not AMQP")
        for option, value in (("serializer", serializer),
                              ("result_serializers", result_serializers)):
            if value:
                warn_ignored(f"Executor({option}=...)", "fedcompute always serializes "
                             "functions, arguments and results with cloudpickle")
        #: Client-side pacing of submission requests, only when asked for (Globus' ranges).
        self.api_burst_limit = None if api_burst_limit is None and api_burst_window_s is None \
            else min(8, max(1, 4 if api_burst_limit is None else api_burst_limit))
        self.api_burst_window_s = None if self.api_burst_limit is None \
            else min(32, max(1, 16 if api_burst_window_s is None else api_burst_window_s))
        self._sent_at: deque[float] = deque()
        #: Tasks the service has acknowledged (Globus Compute's name).
        self.task_count_submitted = 0
        self.capture_output = capture_output
        self.poll_wait = poll_wait
        self._lock = threading.Condition()
        self._queue: deque[tuple[ComputeFuture, dict, str]] = deque()
        self._futures: dict[str, ComputeFuture] = {}
        self._function_ids: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._shutdown = False
        self._sending = 0
        self._submitter: threading.Thread | None = None
        self._poller: threading.Thread | None = None

    # --- Globus Compute's attributes ----------------------------------------------------

    @property
    def endpoint_id(self) -> uuid.UUID | None:
        """Where tasks go: a ``uuid.UUID`` (set it as a UUID or its string) or ``None``."""
        return self._endpoint_id

    @endpoint_id.setter
    def endpoint_id(self, value: UUIDLike | None) -> None:
        self._endpoint_id = as_uuid(value, "endpoint_id") if value else None

    @property
    def task_group_id(self) -> uuid.UUID:
        """The task group of this executor's tasks, a ``uuid.UUID``; set it (a UUID or its
        string) to follow another group, e.g. before ``reload_tasks()``."""
        return self._task_group_id

    @task_group_id.setter
    def task_group_id(self, value: UUIDLike) -> None:
        group = as_uuid(value, "task_group_id")
        if group != getattr(self, "_task_group_id", None):
            self._task_group_id = group
            self._cursor = "0"  # another group's result stream: read it from its start

    @property
    def resource_specification(self) -> dict | None:
        """Resources each task needs (e.g. ``{"GPU": 1, "walltime": 600}``); keys the endpoint
        does not treat as resources are passed to it as options."""
        return self._resource_specification

    @resource_specification.setter
    def resource_specification(self, value: dict | None) -> None:
        self._resource_specification = checked_options(value, "resource_specification")

    @property
    def user_endpoint_config(self) -> dict | None:
        """Values for the endpoint's configuration template, sent with each task (as
        ``options["user_endpoint_config"]``); changes made to it apply to later submissions."""
        return self._user_endpoint_config

    @user_endpoint_config.setter
    def user_endpoint_config(self, value: dict | None) -> None:
        self._user_endpoint_config = checked_options(value, "user_endpoint_config")

    def __repr__(self) -> str:
        label = f"{self.label}; " if self.label else ""
        endpoint = f"ep_id:{self.endpoint_id}; " if self.endpoint_id else ""
        return (f"{type(self).__name__}<{label}{endpoint}tg_id:{self.task_group_id}; "
                f"bs:{self.batch_size}>")

    # --- submission --------------------------------------------------------------------

    def register_function(self, fn: Callable, function_id: str | None = None,
                          **func_register_kwargs: Any) -> str:
        """The function id of ``fn``, registered once per executor.

        ``function_id`` associates a known id without asking the service; other keyword
        arguments (``description``, ``public``, ...) go to ``Client.register_function``.
        """
        if function_id is not None:
            function_id = str(as_uuid(function_id, "function_id"))
        elif not func_register_kwargs:
            try:
                return self._function_ids[fn]
            except (KeyError, TypeError):
                pass
        if function_id is None:
            function_id = self.client.register_function(fn, **func_register_kwargs)
        try:
            self._function_ids[fn] = function_id
        except TypeError:  # not weak-referenceable (some builtins): register each time
            pass
        return function_id

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> ComputeFuture:
        """Run ``fn(*args, **kwargs)`` on the endpoint; returns a :class:`ComputeFuture`."""
        return self.submit_with(fn, args, kwargs)

    def register_source_code(self, source: str, function_name: str,
                             **registration_kwargs: Any) -> str:
        """Register Python source text whose ``function_name`` is the function to run (see
        ``Client.register_source_code``); returns its function id."""
        if self._shutdown:
            raise RuntimeError("cannot register functions after shutdown")
        return self.client.register_source_code(source, function_name, **registration_kwargs)

    def submit_to_registered_function(self, function_id: UUIDLike, args: Iterable | None = None,
                                      kwargs: dict | None = None) -> ComputeFuture:
        """Run an already registered function (e.g. one shared with you) by its id, with
        ``args`` (a tuple or list) and ``kwargs`` (a dict)."""
        if args is not None and not isinstance(args, tuple | list):
            raise TypeError(f"args: expected a tuple, got {type(args).__name__}")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise TypeError(f"kwargs: expected a dict, got {type(kwargs).__name__}")
        endpoint = self._target(None)
        return self._enqueue(endpoint, str(as_uuid(function_id, "function_id")),
                             tuple(args or ()), kwargs, None, None)

    def get_worker_hardware_details(self) -> str:
        """A text report of the hardware of a worker of this executor's endpoint (waits)."""
        return self.submit(run_hardware_report, "fedcompute endpoint worker").result()

    def submit_with(self, fn: Callable, args: Iterable = (), kwargs: dict | None = None, *,
                    resource_specification: dict | None = None,
                    capture_output: bool | None = None,
                    endpoint_id: UUIDLike | None = None) -> ComputeFuture:
        """``submit`` with per-task options (resources, output capture, another endpoint)."""
        endpoint = self._target(endpoint_id)
        return self._enqueue(endpoint, self.register_function(fn), args, kwargs,
                             resource_specification, capture_output)

    def _target(self, endpoint_id: UUIDLike | None) -> str:
        """The endpoint a submission goes to; refuses when there is none or after shutdown."""
        endpoint = endpoint_id or self.endpoint_id
        if not endpoint:
            raise ValueError("no endpoint: pass Executor(endpoint_id=...) or endpoint_id=")
        if self._shutdown:
            raise RuntimeError("cannot submit after shutdown")
        return str(as_uuid(endpoint, "endpoint_id"))

    def _enqueue(self, endpoint: str, function_id: str, args: Iterable, kwargs: dict | None,
                 resource_specification: dict | None,
                 capture_output: bool | None) -> ComputeFuture:
        task = {
            "task_id": str(uuid.uuid4()),
            "function_id": function_id,
            "payload": serialize.serialize_args(tuple(args), dict(kwargs or {})),
        }
        spec = resource_specification or self._resource_specification
        if spec:
            # a snapshot: the attribute may change before the batch goes out
            task["resource_specification"] = copy.deepcopy(spec)
        options: dict[str, Any] = {}
        if capture_output if capture_output is not None else self.capture_output:
            options["capture_output"] = True
        if self._user_endpoint_config:
            options["user_endpoint_config"] = copy.deepcopy(self._user_endpoint_config)
        if options:
            task["options"] = options
        future = ComputeFuture(task["task_id"], self)
        with self._lock:
            self._futures[future.task_id] = future
            self._queue.append((future, task, endpoint))
            self._ensure_threads()
            self._lock.notify_all()
        return future

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None,
            chunksize: int = 1) -> Iterable:
        """Like ``concurrent.futures.Executor.map``; tasks go out in batches."""
        return super().map(fn, *iterables, timeout=timeout)

    def flush(self) -> None:
        """Block until every submitted task has reached the service (or failed to)."""
        rounds = 0
        with self._lock:
            while self._queue or self._sending:
                if rounds == 3:  # say why exiting takes long (e.g. the service is down)
                    log.warning("still sending tasks to the service (%d queued; Ctrl-C "
                                "abandons them)", len(self._queue))
                rounds += 1
                self._lock.wait(1.0)

    def _ensure_threads(self) -> None:
        _live.add(self)
        if self._submitter is None:
            self._submitter = threading.Thread(target=self._submit_loop, daemon=True,
                                               name="fedcompute-submit")
            self._submitter.start()
        if self._poller is None:
            self._poller = threading.Thread(target=self._poll_loop, daemon=True,
                                            name="fedcompute-results")
            self._poller.start()

    def _next_batch(self) -> tuple[str, list[tuple[ComputeFuture, dict]]] | None:
        with self._lock:
            while not self._queue:
                if self._shutdown:
                    return None
                self._lock.wait()
            endpoint = self._queue[0][2]
            batch: list[tuple[ComputeFuture, dict]] = []
            size = 0
            while self._queue and len(batch) < self.batch_size and size < MAX_REQUEST_BYTES:
                future, task, ep = self._queue[0]
                if ep != endpoint:
                    break
                self._queue.popleft()
                if future.cancelled():
                    continue
                batch.append((future, task))
                size += len(task["payload"]) + 200
            self._sending += 1
            return endpoint, batch

    def _submit_loop(self) -> None:
        while (item := self._next_batch()) is not None:
            endpoint, batch = item
            try:
                if batch:
                    self._send(endpoint, batch)
            finally:
                with self._lock:
                    self._sending -= 1
                    self._lock.notify_all()

    def _pace(self) -> None:
        """With ``api_burst_limit`` set: wait until fewer than that many submission requests
        went out in the last ``api_burst_window_s`` seconds."""
        if self.api_burst_limit is None or self.api_burst_window_s is None:
            return
        sent, window = self._sent_at, float(self.api_burst_window_s)
        while sent and time.monotonic() - sent[0] >= window:
            sent.popleft()
        if len(sent) >= self.api_burst_limit:
            time.sleep(max(0.0, window - (time.monotonic() - sent[0])))
            sent.popleft()
        sent.append(time.monotonic())

    def _send(self, endpoint: str, batch: list[tuple[ComputeFuture, dict]]) -> None:
        delay = 0.5
        while True:
            try:
                self._pace()
                self.client.submit_tasks(endpoint, [t for _, t in batch], self.task_group_id)
                with self._lock:
                    self.task_count_submitted += len(batch)
                return
            except errors.PayloadTooLarge as exc:
                if len(batch) > 1:  # find the culprit(s): halve and resend
                    half = len(batch) // 2
                    self._send(endpoint, batch[:half])
                    self._send(endpoint, batch[half:])
                    return
                self._fail(batch, exc)
                return
            except errors.ServiceError as exc:
                if exc.status == 0 or exc.status >= 500:
                    # Unreachable or restarting service: task ids make the resend idempotent.
                    log.warning("submission failed (%s); retrying in %.1fs", exc, delay)
                    threading.Event().wait(delay)
                    delay = min(delay * 2, 10.0)
                    continue
                self._fail(batch, exc)
                return

    def _fail(self, batch: list[tuple[ComputeFuture, dict]], exc: BaseException) -> None:
        with self._lock:
            for future, _ in batch:
                self._futures.pop(future.task_id, None)
                if not future.done():
                    future.set_exception(exc)
            self._lock.notify_all()

    # --- results -----------------------------------------------------------------------

    def _poll_loop(self) -> None:
        delay = 0.5
        while True:
            with self._lock:
                while not self._futures:
                    if self._shutdown:
                        return
                    self._lock.wait()
            try:
                page = self.client.results_page(self.task_group_id, self._cursor,
                                                wait=self.poll_wait)
                delay = 0.5
            except errors.ServiceError as exc:
                if exc.status in (401, 403, 404):
                    self._fail([(f, {}) for f in list(self._futures.values())], exc)
                    continue
                log.warning("result stream failed (%s); retrying in %.1fs", exc, delay)
                threading.Event().wait(delay)
                delay = min(delay * 2, 10.0)
                continue
            self._cursor = page["cursor"]
            for record in page["results"]:
                self._resolve(record)

    def _resolve(self, record: dict) -> None:
        with self._lock:
            future = self._futures.pop(record["task_id"], None)
            if not self._futures:
                self._lock.notify_all()
        if future is None or future.done():
            return
        future.stdout = record.get("stdout")
        future.stderr = record.get("stderr")
        try:
            ok, value = decode_outcome(record)
        except Exception as exc:  # noqa: BLE001 - e.g. result needs a module we lack
            ok, value = False, exc
        if ok:
            future.set_result(value)
        elif isinstance(value, errors.TaskCancelled):
            future.cancel_local()
        else:
            future.set_exception(value)

    def _cancel_remote(self, future: ComputeFuture) -> bool:
        with self._lock:
            for i, (queued, _, _) in enumerate(self._queue):
                if queued is future:
                    del self._queue[i]
                    self._futures.pop(future.task_id, None)
                    return True
        try:
            status = self.client.cancel_task(future.task_id)
        except errors.ServiceError:
            return False
        if status == "cancelled":
            with self._lock:
                self._futures.pop(future.task_id, None)
            return True
        return False

    def reload_tasks(self, task_group_id: UUIDLike | None = None) -> list[ComputeFuture]:
        """Futures for every task of a task group, e.g. submitted by a process that has exited."""
        if task_group_id:
            self.task_group_id = task_group_id
            self._cursor = "0"
        task_ids = self.client.get_task_group(self.task_group_id)
        futures = []
        with self._lock:
            for tid in task_ids:
                future = self._futures.get(tid) or ComputeFuture(tid, self)
                self._futures[tid] = future
                futures.append(future)
            self._ensure_threads()
            self._lock.notify_all()
        return futures

    # --- lifecycle ---------------------------------------------------------------------

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting tasks; optionally cancel those not started; optionally wait."""
        if cancel_futures:
            with self._lock:
                pending = list(self._futures.values())
            for future in pending:
                future.cancel()
        with self._lock:
            self._shutdown = True
            self._lock.notify_all()
            if wait:
                while self._queue or self._sending or self._futures:
                    self._lock.wait(1.0)

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(wait=True)

