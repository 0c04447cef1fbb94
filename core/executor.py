"""``fedcompute.Executor``: a ``concurrent.futures.Executor`` that runs on an endpoint.

Submissions are queued and sent in batches by one background thread; one more thread
long-polls the task group's result stream and resolves futures as results arrive, so the cost
per task is a few microseconds of local work and a share of one HTTP request.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import logging
import threading
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from . import errors, serialize
from .client import Client, decode_outcome

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
    """

    def __init__(self, endpoint_id: str | None = None, client: Client | None = None,
                 task_group_id: str | None = None, batch_size: int = 2000,
                 resource_specification: dict | None = None, capture_output: bool = False,
                 poll_wait: float = 20.0):
        self.endpoint_id = endpoint_id
        self.client = client or Client()
        self.task_group_id = task_group_id or str(uuid.uuid4())
        self.batch_size = batch_size
        self.resource_specification = resource_specification
        self.capture_output = capture_output
        self.poll_wait = poll_wait
        self._lock = threading.Condition()
        self._queue: deque[tuple[ComputeFuture, dict, str]] = deque()
        self._futures: dict[str, ComputeFuture] = {}
        self._function_ids: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._cursor = "0"
        self._shutdown = False
        self._sending = 0
        self._submitter: threading.Thread | None = None
        self._poller: threading.Thread | None = None

    # --- submission --------------------------------------------------------------------

    def register_function(self, fn: Callable) -> str:
        try:
            return self._function_ids[fn]
        except (KeyError, TypeError):
            pass
        function_id = self.client.register_function(fn)
        try:
            self._function_ids[fn] = function_id
        except TypeError:  # not weak-referenceable (some builtins): register each time
            pass
        return function_id

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> ComputeFuture:
        """Run ``fn(*args, **kwargs)`` on the endpoint; returns a :class:`ComputeFuture`."""
        return self.submit_with(fn, args, kwargs)

    def submit_with(self, fn: Callable, args: Iterable = (), kwargs: dict | None = None, *,
                    resource_specification: dict | None = None,
                    capture_output: bool | None = None,
                    endpoint_id: str | None = None) -> ComputeFuture:
        """``submit`` with per-task options (resources, output capture, another endpoint)."""
        endpoint = endpoint_id or self.endpoint_id
        if not endpoint:
            raise ValueError("no endpoint: pass Executor(endpoint_id=...) or endpoint_id=")
        if self._shutdown:
            raise RuntimeError("cannot submit after shutdown")
        task = {
            "task_id": str(uuid.uuid4()),
            "function_id": self.register_function(fn),
            "payload": serialize.serialize_args(tuple(args), dict(kwargs or {})),
        }
        spec = resource_specification or self.resource_specification
        if spec:
            task["resource_specification"] = spec
        if capture_output if capture_output is not None else self.capture_output:
            task["options"] = {"capture_output": True}
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

    def _send(self, endpoint: str, batch: list[tuple[ComputeFuture, dict]]) -> None:
        delay = 0.5
        while True:
            try:
                self.client.submit_tasks(endpoint, [t for _, t in batch], self.task_group_id)
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

    def reload_tasks(self, task_group_id: str | None = None) -> list[ComputeFuture]:
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

