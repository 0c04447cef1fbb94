"""``fedcompute.Executor``: a ``concurrent.futures.Executor`` that runs on an endpoint.

Submissions are queued and sent in batches by one background thread; one more thread
long-polls the task group's result stream and resolves futures as results arrive, so the cost
per task is a few microseconds of local work and a share of one HTTP request.

Longer than our ~400-line guide: it is Globus Compute's ``Executor`` surface (its arguments,
attributes and methods, with their checks and warnings) in one class; the machinery is in
``submission.py`` (batches), ``results.py`` (the long-poll), ``future.py`` and
``endpoint_check.py``.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import copy
import datetime
import itertools
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from . import errors, serialize
from .client import Client, UUIDLike, as_uuid, checked_options, decode_outcome, warn_ignored
from .config import home
from .endpoint_check import CheckVersions, EndpointCheck
from .future import ComputeFuture
from .protocol import packb, unpackb
from .results import ResultPoller
from .shell import run_hardware_report
from .submission import MAX_REQUEST_BYTES, Submitter

__all__ = ["MAX_REQUEST_BYTES", "ComputeFuture", "Executor", "resubmit_unsent"]

log = logging.getLogger(__name__)

#: Executors whose background threads run: flushed at interpreter exit (see _flush_at_exit).
_live: weakref.WeakSet[Executor] = weakref.WeakSet()

#: When a task must start by: seconds from its submission, or a point in time.
Deadline = float | datetime.datetime | None


def _unix_time(deadline: Deadline) -> float | None:
    if deadline is None:
        return None
    if isinstance(deadline, datetime.datetime):
        if deadline.tzinfo is None:
            raise ValueError("deadline: give an aware datetime (with a timezone)")
        return deadline.timestamp()
    if isinstance(deadline, bool) or not isinstance(deadline, int | float) or deadline < 0:
        raise ValueError(f"deadline must be seconds from now (>= 0) or a datetime, not "
                         f"{deadline!r}")
    return time.time() + float(deadline)


def exit_flush_timeout() -> float:
    """How long a script's exit waits for unsent tasks (``FEDCOMPUTE_EXIT_FLUSH_TIMEOUT``,
    seconds, default 30)."""
    return float(os.environ.get("FEDCOMPUTE_EXIT_FLUSH_TIMEOUT") or 30)


@atexit.register
def _flush_at_exit() -> None:
    """Fire and forget: a script that submits and exits must not lose the tasks still queued
    in memory, which only the (daemon) submission thread sends. Runs while daemon threads
    still run; results are not waited for. The wait is bounded: with the service gone, what
    was not sent is saved to a file, and the log says how to send it later."""
    for executor in list(_live):
        unsent = executor.flush(exit_flush_timeout())
        if unsent:
            path = executor.save_unsent(unsent)
            log.error("%d tasks could not be sent to %s before exit; they are saved in %s: "
                      "send them with `fedcompute task resubmit %s` (their ids are kept, so "
                      "none runs twice)", len(unsent), executor.client.service_url, path, path)


def resubmit_unsent(path: str | Path, client: Client | None = None) -> int:
    """Send the tasks a script saved when it could not (see ``Executor.save_unsent``); safe
    to repeat. Returns how many tasks the service now has."""
    saved = unpackb(Path(path).read_bytes())
    client = client or Client()
    count = 0
    for batch in saved["batches"]:
        for i in range(0, len(batch["tasks"]), 2000):
            tasks = batch["tasks"][i:i + 2000]
            client.submit_tasks(batch["endpoint_id"], tasks, saved["task_group_id"])
            count += len(tasks)
    return count


class _Chunk:
    """``map(..., chunksize=n)``: one task runs ``fn`` over n argument tuples."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.__name__ = f"chunk[{getattr(fn, '__name__', 'function')}]"

    def __call__(self, *arg_tuples: tuple) -> list:
        return [self.fn(*args) for args in arg_tuples]


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
    ignored with a warning. ``capture_output``, ``stream_output`` (each task's stdout, stderr
    and logging lines reach its future while it runs: ``future.iter_output()``,
    ``future.add_output_callback(fn)``), ``deadline`` (tasks not started this many seconds
    after submission, or by this aware ``datetime``, fail with ``DeadlineExceeded``) and
    ``poll_wait`` are fedcompute's own, and
    so are the checks at the first submission to each endpoint: ``check_versions`` (raise
    ``VersionMismatchError``, ``"warn"`` or ``False`` when the endpoint's Python, cloudpickle
    or fedcompute version could not run these functions) and ``offline_warning_after``
    (warn when the endpoint has been offline for longer, in seconds; ``None``: never).
    """

    def __init__(self, endpoint_id: UUIDLike | None = None, client: Client | None = None,
                 task_group_id: UUIDLike | None = None,
                 resource_specification: dict | None = None,
                 user_endpoint_config: dict | None = None, label: str = "",
                 batch_size: int = 2000, amqp_port: int | None = None,
                 api_burst_limit: int | None = None, api_burst_window_s: int | None = None,
                 serializer: Any = None, result_serializers: Iterable | None = None, *,
                 capture_output: bool = False, stream_output: bool = False,
                 deadline: Deadline = None,
                 poll_wait: float = 20.0, check_versions: CheckVersions = True,
                 offline_warning_after: float | None = 300.0):
        self.endpoint_id = endpoint_id
        self.client = client or Client()
        self._lock = threading.Condition()
        self._futures: dict[str, ComputeFuture] = {}
        self._results = ResultPoller(self.client, lambda: self.task_group_id, poll_wait,
                                     lambda: bool(self._futures), self._resolve,
                                     self._refused, self._lock, self._state_event,
                                     self._output_event)
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
        self.capture_output = capture_output
        self.stream_output = stream_output
        #: Tasks not started this many seconds after their submission (or by this
        #: ``datetime``) fail with ``DeadlineExceeded``.
        self.deadline = deadline
        self._check_endpoint = EndpointCheck(self.client, check_versions, offline_warning_after)
        self._submitter = Submitter(
            self.client, lambda: self.task_group_id, self.batch_size, self._fail,
            None if self.api_burst_limit is None
            else (self.api_burst_limit, self.api_burst_window_s))
        self._function_ids: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._shutdown = False

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
            self._results.cursor = "0"  # another group's result stream: read it from its start

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
                    stream_output: bool | None = None, deadline: Deadline = None,
                    endpoint_id: UUIDLike | None = None) -> ComputeFuture:
        """``submit`` with per-task options (resources, output capture or streaming, a
        deadline to start by, another endpoint)."""
        endpoint = self._target(endpoint_id)
        return self._enqueue(endpoint, self.register_function(fn), args, kwargs,
                             resource_specification, capture_output, stream_output, deadline)

    def _target(self, endpoint_id: UUIDLike | None) -> str:
        """The endpoint a submission goes to; refuses when there is none or after shutdown."""
        endpoint = endpoint_id or self.endpoint_id
        if not endpoint:
            raise ValueError("no endpoint: pass Executor(endpoint_id=...) or endpoint_id=")
        if self._shutdown:
            raise RuntimeError("cannot submit after shutdown")
        endpoint = str(as_uuid(endpoint, "endpoint_id"))
        self._check_endpoint(endpoint)
        return endpoint

    def _enqueue(self, endpoint: str, function_id: str, args: Iterable, kwargs: dict | None,
                 resource_specification: dict | None, capture_output: bool | None,
                 stream_output: bool | None = None,
                 deadline: Deadline = None) -> ComputeFuture:
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
        if stream_output if stream_output is not None else self.stream_output:
            options["stream_output"] = True
        start_by = _unix_time(deadline if deadline is not None else self.deadline)
        if start_by is not None:
            options["deadline"] = start_by
        if self._user_endpoint_config:
            options["user_endpoint_config"] = copy.deepcopy(self._user_endpoint_config)
        if options:
            task["options"] = options
        future = ComputeFuture(task["task_id"], self)
        with self._lock:
            self._futures[future.task_id] = future
            _live.add(self)
            self._results.start()
            self._lock.notify_all()
        self._submitter.put(future, task, endpoint)
        return future

    @property
    def task_count_submitted(self) -> int:
        """Tasks the service has acknowledged (Globus Compute's name)."""
        return self._submitter.submitted

    @property
    def poll_wait(self) -> float:
        return self._results.poll_wait

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None,
            chunksize: int = 1) -> Iterator:
        """Like ``concurrent.futures.Executor.map``; tasks go out in batches. With
        ``chunksize`` > 1, each task calls ``fn`` for that many items (as
        ``ProcessPoolExecutor.map`` does): fewer, longer tasks."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1")
        if chunksize == 1:
            return super().map(fn, *iterables, timeout=timeout)
        arguments = zip(*iterables, strict=False)
        chunks = iter(lambda: tuple(itertools.islice(arguments, chunksize)), ())
        return self._map_chunks(fn, chunks, timeout)

    def _map_chunks(self, fn: Callable, chunks: Iterator[tuple], timeout: float | None
                    ) -> Iterator:
        chunk_fn = _Chunk(fn)
        futures = [self.submit(chunk_fn, *chunk) for chunk in chunks]
        deadline = None if timeout is None else time.monotonic() + timeout

        def results() -> Iterator:
            for future in futures:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                yield from future.result(left)

        return results()

    def flush(self, timeout: float | None = None) -> list[tuple[ComputeFuture, dict, str]]:
        """Block until every submitted task has reached the service (or was refused), at
        most ``timeout`` seconds; returns what was not sent by then."""
        return self._submitter.flush(timeout)

    def save_unsent(self, unsent: list[tuple[ComputeFuture, dict, str]],
                    directory: Path | None = None) -> Path:
        """Write tasks that could not be sent to a file for :func:`resubmit_unsent`
        (``fedcompute task resubmit FILE``); returns its path."""
        by_endpoint: dict[str, list[dict]] = {}
        for _, task, endpoint in unsent:
            by_endpoint.setdefault(endpoint, []).append(task)
        folder = directory or home() / "unsent"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.task_group_id}-{time.strftime('%Y%m%d-%H%M%S')}.msgpack"
        path.write_bytes(packb({"task_group_id": str(self.task_group_id), "batches": [
            {"endpoint_id": e, "tasks": t} for e, t in by_endpoint.items()]}))
        path.chmod(0o600)
        return path

    def _fail(self, batch: list[tuple[ComputeFuture, dict]], exc: BaseException) -> None:
        with self._lock:
            for future, _ in batch:
                self._futures.pop(future.task_id, None)
                if not future.done():
                    future.set_exception(exc)
            self._lock.notify_all()

    # --- results -----------------------------------------------------------------------

    def _refused(self, exc: BaseException) -> None:
        with self._lock:
            waiting = list(self._futures.values())
        self._fail([(f, {}) for f in waiting], exc)

    def _state_event(self, event: dict) -> None:
        with self._lock:
            futures = [self._futures.get(t) for t in event["task_ids"]]
        for future in futures:
            if future is not None and not future.done():
                future._status = event["state"]

    def _output_event(self, event: dict) -> None:
        with self._lock:
            future = self._futures.get(event["task_id"])
        if future is not None and not future.done():
            future._add_output(event["stream"], event["text"], event["at"])

    def _resolve(self, record: dict) -> None:
        with self._lock:
            future = self._futures.pop(record["task_id"], None)
            if not self._futures:
                self._lock.notify_all()
        if future is None or future.done():
            return
        future.stdout = record.get("stdout")
        future.stderr = record.get("stderr")
        future._status = record.get("status", future._status)
        future._end_output()
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
        if self._submitter.withdraw(future):
            with self._lock:
                self._futures.pop(future.task_id, None)
            return True
        try:
            status = self.client.cancel_task(future.task_id)
        except errors.ServiceError:
            return False
        if status in ("cancelled", "cancelling"):  # cancelling: the endpoint stops it
            with self._lock:
                self._futures.pop(future.task_id, None)
            return True
        return False

    def cancel_task_group(self) -> dict[str, int]:
        """Cancel every unfinished task of this executor's task group, running ones included
        (also those another process submitted to it); counts by state afterwards, those
        withdrawn here before they were sent among the ``cancelled``."""
        with self._lock:
            mine = list(self._futures.values())
        withdrawn = 0
        for future in mine:
            if self._submitter.withdraw(future):
                with self._lock:
                    self._futures.pop(future.task_id, None)
                future.cancel_local()
                withdrawn += 1
        self.flush(30)
        states = self.client.cancel_task_group(self.task_group_id)
        if withdrawn:
            states["cancelled"] = states.get("cancelled", 0) + withdrawn
        return states

    def reload_tasks(self, task_group_id: UUIDLike | None = None) -> list[ComputeFuture]:
        """Futures for every task of a task group, e.g. submitted by a process that has exited."""
        if task_group_id:
            self.task_group_id = task_group_id
        task_ids = self.client.get_task_group(str(self.task_group_id))
        futures = []
        with self._lock:
            for tid in task_ids:
                future = self._futures.get(tid) or ComputeFuture(tid, self)
                self._futures[tid] = future
                futures.append(future)
            _live.add(self)
            self._results.start()
            self._lock.notify_all()
        return futures

    # --- lifecycle ---------------------------------------------------------------------

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False,
                 cancel_timeout: float | None = None) -> None:
        """Stop accepting tasks; optionally cancel those not finished; optionally wait.

        ``cancel_futures``: tasks not sent yet are dropped here; for the others one bulk
        request asks the service to cancel them, running ones included (with ``wait=False``
        in the background, so that an unreachable service does not hold the caller; at most
        ``cancel_timeout`` seconds, when given, before a process that is ending exits)."""
        if cancel_futures:
            with self._lock:
                pending = [f for f in self._futures.values() if not f.done()]
            sent = []
            for future in pending:
                if self._submitter.withdraw(future):
                    with self._lock:
                        self._futures.pop(future.task_id, None)
                    future.cancel_local()
                else:
                    sent.append(future)
            if sent:
                cancel = threading.Thread(target=self._cancel_sent, args=(sent,), daemon=True,
                                          name="fedcompute-cancel")
                cancel.start()
                if wait or cancel_timeout is not None:
                    cancel.join(None if wait else cancel_timeout)
        self._shutdown = True
        self._submitter.close()
        with self._lock:
            self._results.closed = True
            self._lock.notify_all()
            if wait:
                while self._submitter.busy() or self._futures:
                    self._lock.wait(1.0)

    def _cancel_sent(self, futures: list[ComputeFuture]) -> None:
        try:
            statuses = self.client.cancel_tasks([f.task_id for f in futures])
        except errors.ServiceError as exc:
            log.warning("could not cancel %d tasks: %s", len(futures), exc)
            return
        for future in futures:
            if statuses.get(future.task_id) in ("cancelled", "cancelling"):
                with self._lock:
                    self._futures.pop(future.task_id, None)
                    self._lock.notify_all()
                future.cancel_local()

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(wait=True)
