"""The endpoint side of ``FederatedTaskRunner``: what runs inside a Dask worker.

This module must import without Prefect: a task's function body can run on an endpoint that
has no Prefect installed. Prefect is used here only when it is importable (to make
``get_run_logger()`` and ``prefect.runtime`` work inside the remote body) and in
``EngineBody`` (the mode that runs the whole Prefect task engine on the endpoint).

A task's output (``print``, ``sys.stderr``, ``logging``) is captured per thread of the worker
and travels back with the outcome as a list of plain tuples, so that the flow side can replay
each line into the Prefect task run's logs with its level and remote timestamp:

* on success the body returns ``(value, events)``;
* on failure it raises :class:`RemoteTaskError`, which carries the original exception packed by
  ``fedcompute.serialize.pack_exception`` (its type, message, remote traceback and pickle) and
  the events. The flow side re-raises the original exception.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import io
import logging
import sys
import threading
import time
import types
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fedcompute import serialize, worker_slot
from fedcompute.output import live_writer

#: One captured event: (kind, unix time, level, logger name, message); kind is "out", "err",
#: "log" (a ``logging`` record) or "run" (a record of Prefect's ``get_run_logger()``).
Event = tuple[str, float, int, str, str]

#: Bounds of what one task sends back (the rest is summarized in one line).
MAX_EVENTS = 5000
MAX_CHARS = 1024 * 1024


class RemoteTaskError(Exception):
    """A remote task body failed: the packed original exception plus the captured output."""

    def __init__(self, envelope: dict, events: list[Event]):
        # The original traceback as the message: it is what fedcompute's task record shows.
        super().__init__(envelope.get("traceback") or f"{envelope.get('type')}: "
                         f"{envelope.get('message')}")
        self.envelope = envelope
        self.events = events

    def __reduce__(self):
        return type(self), (self.envelope, self.events)


# --- per-thread capture ------------------------------------------------------------------

_lock = threading.Lock()
_active: dict[int, _Capture] = {}
_level_users = 0
_saved_root_level: int | None = None
_sink_installed = False


def _current_capture(ident: int | None = None) -> _Capture | None:
    """The capture of this thread; or, when only one task runs in this process, that one
    (so that output from threads a task starts is captured too)."""
    cap = _active.get(threading.get_ident() if ident is None else ident)
    if cap is None and len(_active) == 1:
        try:
            cap = next(iter(_active.values()))
        except (StopIteration, RuntimeError):  # changed under us: not worth a lock here
            cap = None
    return cap


class _StreamRouter(io.TextIOBase):
    """Stands in for ``sys.stdout``/``sys.stderr``: writes go to the writing thread's capture,
    or to the original stream when that thread runs no captured task."""

    def __init__(self, original: Any, kind: str):
        super().__init__()
        self._original = original
        self._kind = kind

    def write(self, text: str) -> int:
        cap = _current_capture()
        if cap is None:
            return self._original.write(text)
        cap.write(self._kind, text)
        live = live_writer()  # the runner's stream_output: the flow side logs it as it comes
        if live is not None:
            live("stdout" if self._kind == "out" else "stderr", text)
        return len(text)

    def flush(self) -> None:
        try:
            self._original.flush()
        except Exception:  # noqa: BLE001 - a closed original stream must not fail the task
            pass

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._original.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._original, "encoding", "utf-8")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


class _LogRouter(logging.Handler):
    """One handler on the root logger; hands each record to the capture of its thread."""

    def emit(self, record: logging.LogRecord) -> None:
        cap = _current_capture(record.thread)
        if cap is not None and record.levelno >= cap.level:
            cap.log(record)


_log_router = _LogRouter(logging.NOTSET)
_formatter = logging.Formatter()


def _install() -> None:
    """(Re)install the routers; cheap when already in place. Prefect's import or a library's
    ``logging.basicConfig``/``dictConfig`` may have replaced them since the last task."""
    if not isinstance(sys.stdout, _StreamRouter):
        sys.stdout = _StreamRouter(sys.stdout, "out")
    if not isinstance(sys.stderr, _StreamRouter):
        sys.stderr = _StreamRouter(sys.stderr, "err")
    root = logging.getLogger()
    if _log_router not in root.handlers:
        root.addHandler(_log_router)
    loggers = [root, *(lg for lg in list(logging.root.manager.loggerDict.values())
                       if isinstance(lg, logging.Logger) and lg.handlers)]
    for handler in (h for lg in loggers for h in lg.handlers):
        # A console handler configured while our router was sys.stderr (Prefect configures
        # its loggers when a body first imports it, or when a remote engine ran here before)
        # would copy every record into the capture a second time.
        if isinstance(handler, logging.StreamHandler) and isinstance(handler.stream,
                                                                     _StreamRouter):
            handler.setStream(handler.stream._original)
        console = getattr(handler, "console", None)  # Prefect's rich console handler
        if console is not None and isinstance(getattr(console, "file", None), _StreamRouter):
            console.file = console.file._original


def _install_prefect_sink() -> None:
    """Keep records of captured task runs away from Prefect's API log worker (the endpoint may
    not reach the API; they travel back with the result instead). Others pass through."""
    global _sink_installed
    if _sink_installed:
        return
    from . import _compat

    previous = _compat.api_log_sink()

    def sink(log: dict) -> None:
        task_run_id = log.get("task_run_id")
        if task_run_id and any(c.task_run_id == str(task_run_id) for c in list(_active.values())):
            return
        if previous is not None:
            previous(log)
        else:
            _compat.send_to_api_log_worker(log)

    _compat.set_api_log_sink(sink)
    _sink_installed = True


class _Capture:
    """Collect one task's output as :data:`Event` tuples (bounded)."""

    def __init__(self, level: int, task_run_id: str | None):
        self.level = level
        self.task_run_id = task_run_id
        self.events: list[Event] = []
        self.partial = {"out": "", "err": ""}
        self.chars = 0
        self.dropped = 0

    def _add(self, event: Event) -> None:
        if len(self.events) >= MAX_EVENTS or self.chars >= MAX_CHARS:
            self.dropped += 1
            return
        self.chars += len(event[4])
        self.events.append(event)

    def write(self, kind: str, text: str) -> None:
        buffered = self.partial[kind] + text
        *lines, rest = buffered.split("\n")
        self.partial[kind] = rest
        level = logging.INFO if kind == "out" else logging.WARNING
        now = time.time()
        for line in lines:
            self._add((kind, now, level, "", line))
        if len(rest) > 65536:  # a progress bar without newlines: do not grow without bound
            self._add((kind, now, level, "", rest))
            self.partial[kind] = ""

    def log(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not fail the task
            message = str(record.msg)
        if record.exc_info and not record.exc_text:
            record.exc_text = _formatter.formatException(record.exc_info)
        if record.exc_text:
            message = f"{message}\n{record.exc_text}"
        if record.stack_info:
            message = f"{message}\n{record.stack_info}"
        kind = "run" if getattr(record, "task_run_id", None) == self.task_run_id else "log"
        self._add((kind, record.created, record.levelno, record.name, message))

    def finish(self) -> list[Event]:
        now = time.time()
        for kind in ("out", "err"):
            if self.partial[kind]:
                level = logging.INFO if kind == "out" else logging.WARNING
                self._add((kind, now, level, "", self.partial[kind]))
                self.partial[kind] = ""
        if self.dropped:
            self.events.append(("err", now, logging.WARNING, "",
                                f"[fedcompute] {self.dropped} more output lines/records of this "
                                "task were dropped (limit: "
                                f"{MAX_EVENTS} lines or {MAX_CHARS} characters)"))
        return self.events

    def __enter__(self) -> _Capture:
        global _level_users, _saved_root_level
        with _lock:
            _install()
            _active[threading.get_ident()] = self
            _level_users += 1
            root = logging.getLogger()
            # Records below the root's level (WARNING by default) never reach handlers: lower it
            # while captured tasks run, and put it back when the last one ends.
            if _level_users == 1:
                _saved_root_level = root.level
            if root.level != logging.NOTSET and root.level > self.level:
                root.setLevel(self.level)
        return self

    def __exit__(self, *exc: object) -> None:
        global _level_users, _saved_root_level
        with _lock:
            _active.pop(threading.get_ident(), None)
            _level_users -= 1
            if _level_users == 0 and _saved_root_level is not None:
                logging.getLogger().setLevel(_saved_root_level)
                _saved_root_level = None


# --- what a body may do besides computing: nested submission ----------------------------------


@dataclass
class BodyScope:
    """What a running remote body carries for tasks it submits itself (nested submission).

    ``auth``: the submitting runner's service URL and token (``None``: nested submission is
    off for that runner). ``nested``: how to build the runner for nested submissions in the
    default mode (endpoint, options, the flow run's serialized context). ``seceded``: whether
    this body gave its Dask worker slot back while it waits for the tasks it submitted.
    """

    auth: dict | None = None
    nested: dict | None = None
    seceded: str | bool = False
    runners: list = field(default_factory=list)


_scope: contextvars.ContextVar[BodyScope | None] = contextvars.ContextVar(
    "fedcompute_prefect_body", default=None)


def current_scope() -> BodyScope | None:
    """The scope of the remote body running in this thread (None outside one)."""
    return _scope.get()


def leave_worker_slot(scope: BodyScope) -> None:
    """Give this body's worker slot back while it waits for tasks it submitted: otherwise
    every nesting level holds a slot and a deep recursion deadlocks once they are all taken
    (:mod:`fedcompute.worker_slot`). Taken back when the body ends."""
    if scope.seceded:
        return
    scope.seceded = worker_slot.leave() or False


def _return_worker_slot(scope: BodyScope) -> None:
    if scope.seceded:
        how, scope.seceded = scope.seceded, False
        worker_slot.rejoin(how)


# --- a minimal Prefect run context -------------------------------------------------------


class _TaskInfo:
    """What a ``TaskRunContext.task`` offers the body (name, fn, tags, ...) without the real
    ``Task`` object, which stays with the flow."""

    def __init__(self, meta: dict, fn: Callable):
        self.name = meta["task_name"]
        self.fn = fn
        self.tags = set(meta.get("task_tags", ()))
        self.task_key = meta.get("task_key", "")
        self.version = meta.get("task_version")
        self.isasync = inspect.iscoroutinefunction(fn)
        self.retries = meta.get("retries", 0)

    def __repr__(self) -> str:
        return f"<task {self.name!r} (remote body)>"


def _prefect_contexts(meta: dict, fn: Callable, args: tuple, kwargs: dict,
                      scope: BodyScope) -> list:
    """The run contexts a Prefect task body sees, rebuilt from ``meta`` without the Prefect
    API: a ``TaskRunContext`` (ids, names, run count, parameters, tags: what
    ``get_run_context()``, ``get_run_logger()`` and ``prefect.runtime`` read), the tags
    context, and a flow run context whose task runner submits nested tasks through the
    service. Empty without Prefect here.
    """
    # Only when the body's module already brought Prefect in (unpickling a function that uses
    # ``get_run_logger`` imports it): plain functions do not pay Prefect's import time.
    if not meta or "prefect" not in sys.modules:
        return []
    from prefect.client.schemas.objects import FlowRun, TaskRun
    from prefect.context import FlowRunContext, TagsContext, TaskRunContext

    _install_prefect_sink()
    try:
        parameters = dict(inspect.signature(fn).bind_partial(*args, **kwargs).arguments)
    except (TypeError, ValueError):
        parameters = {}
    flow_run_id = uuid.UUID(meta["flow_run_id"]) if meta.get("flow_run_id") else None
    task_run = TaskRun.model_construct(
        id=uuid.UUID(meta["task_run_id"]), name=meta["task_run_name"], flow_run_id=flow_run_id,
        task_key=meta.get("task_key", ""), dynamic_key=meta.get("dynamic_key", ""),
        run_count=meta.get("run_count", 1), tags=list(meta.get("tags", ())),
        task_inputs={}, empirical_policy=None, state=None,
    )
    contexts: list = [TagsContext.model_construct(current_tags=set(meta.get("current_tags",
                                                                            ())))]
    if scope.nested is not None and flow_run_id is not None:
        from .nested import NestedTaskRunner

        runner = NestedTaskRunner(scope, parameters)
        scope.runners.append(runner)
        contexts.append(FlowRunContext.model_construct(
            flow=None, flow_run=FlowRun.model_construct(id=flow_run_id,
                                                        name=meta.get("flow_run_name", "")),
            task_runner=runner, parameters=scope.nested.get("flow_parameters") or {},
            result_store=None, detached=True, log_prints=False,
        ))
    contexts.append(TaskRunContext.model_construct(
        task=_TaskInfo(meta, fn), task_run=task_run, parameters=parameters, log_prints=False,
        client=None, result_store=None, persist_result=False, input_keyset=None,
    ))
    return contexts


# --- the bodies ----------------------------------------------------------------------------


class TaskBody:
    """The remote function of one Prefect task: runs ``fn`` with output capture and the task
    run's context.

    One instance per task function and runner (and so per flow run: ``nested`` holds the flow
    run's serialized context, for tasks the body submits), so that fedcompute registers it
    once rather than sending the function with every call.
    """

    def __init__(self, fn: Callable, nested: dict | None = None):
        self.fn = fn
        self.nested = nested
        self.__name__ = getattr(fn, "__name__", "task")
        self.__doc__ = getattr(fn, "__doc__", None)

    def __call__(self, meta: dict, args: tuple, kwargs: dict, level: int = logging.INFO,
                 auth: dict | None = None) -> tuple:
        cap = _Capture(level, meta.get("task_run_id") if meta else None)
        scope = BodyScope(auth=auth, nested=self.nested)
        try:
            with cap:
                value = contextvars.copy_context().run(self._run, scope, meta, args, kwargs)
        except BaseException as exc:  # noqa: BLE001 - every failure goes back with its output
            exc.__traceback__ = _user_frames(exc.__traceback__)
            raise RemoteTaskError(serialize.pack_exception(exc), cap.finish()) from None
        return value, cap.finish()

    def _run(self, scope: BodyScope, meta: dict, args: tuple, kwargs: dict) -> Any:
        token = _scope.set(scope)
        contexts = _prefect_contexts(meta, self.fn, args, kwargs, scope)
        try:
            for ctx in contexts:
                ctx.__enter__()
            try:
                value = self._call(args, kwargs)
            finally:
                # Like a flow: tasks the body submitted run to completion before it returns.
                for runner in scope.runners:
                    runner.finish()
        finally:
            for ctx in reversed(contexts):
                ctx.__exit__(None, None, None)
            _scope.reset(token)
            _return_worker_slot(scope)
        return value

    def _call(self, args: tuple, kwargs: dict) -> Any:
        result = self.fn(*args, **kwargs)
        if inspect.isawaitable(result):
            # An async task: run it to completion on an event loop of this worker thread.
            result = asyncio.run(_await(result))
        return result


def _user_frames(tb: types.TracebackType | None) -> types.TracebackType | None:
    """The traceback without this module's frames at its head (the user sees their code)."""
    while tb is not None and tb.tb_next is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return tb


async def _await(awaitable: Any) -> Any:
    return await awaitable


class EngineBody:
    """The remote function of ``remote_engine=True``: the whole Prefect task engine (states,
    retries, caching, result persistence) runs on the endpoint, which must reach the Prefect API.

    Holds the task and the flow run's serialized context, so that both are registered with
    fedcompute once per task and runner rather than sent with every call. Returns the run's
    final state, also when the body raised ``KeyboardInterrupt``/``SystemExit`` (the run is
    then ``Crashed``, as Prefect records it).
    """

    def __init__(self, task: Any, context: dict):
        self.task = task
        self.context = context
        self.__name__ = f"prefect-engine:{getattr(task, 'name', 'task')}"

    def __call__(self, task_run_id: Any, parameters: dict, wait_for: Any,
                 dependencies: Any, auth: dict | None = None,
                 asset_context: dict | None = None) -> Any:
        from prefect.context import hydrated_context

        scope = BodyScope(auth=auth)
        token = _scope.set(scope)
        context = {**self.context, "asset_context": asset_context} if asset_context else \
            self.context
        try:
            with hydrated_context(context):
                if self.task.isasync:
                    return asyncio.run(self._run_async(task_run_id, parameters, wait_for,
                                                       dependencies))
                return self._run_sync(task_run_id, parameters, wait_for, dependencies)
        finally:
            _scope.reset(token)
            _return_worker_slot(scope)

    def _run_sync(self, task_run_id: Any, parameters: dict, wait_for: Any,
                  dependencies: Any) -> Any:
        from prefect.task_engine import SyncTaskRunEngine

        from ._compat import run_engine_sync

        engine = SyncTaskRunEngine(task=self.task, parameters=parameters, wait_for=wait_for)
        try:
            return run_engine_sync(engine, task_run_id, dependencies)
        except (KeyboardInterrupt, SystemExit):
            return _crashed(engine)

    async def _run_async(self, task_run_id: Any, parameters: dict, wait_for: Any,
                         dependencies: Any) -> Any:
        from prefect.task_engine import AsyncTaskRunEngine

        from ._compat import run_engine

        engine = AsyncTaskRunEngine(task=self.task, parameters=parameters, wait_for=wait_for)
        try:
            return await run_engine(engine, task_run_id, dependencies)
        except (KeyboardInterrupt, SystemExit):
            return _crashed(engine)


def _crashed(engine: Any) -> Any:
    """The state of an engine whose body raised KeyboardInterrupt/SystemExit: the engine has
    recorded the crash; the exception itself must not reach the flow's event loop."""
    state = engine.state
    if state is None or not state.is_crashed():
        raise RuntimeError("the task engine did not record the crash")  # pragma: no cover
    return state
