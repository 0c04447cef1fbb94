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
import inspect
import io
import logging
import sys
import threading
import time
import types
import uuid
from collections.abc import Callable
from typing import Any

from fedcompute import serialize

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
    for handler in root.handlers:
        # A console handler configured while our router was sys.stderr (Prefect configures
        # logging when a body first imports it) would copy every record into the capture.
        if isinstance(handler, logging.StreamHandler) and isinstance(handler.stream,
                                                                     _StreamRouter):
            handler.setStream(handler.stream._original)


def _install_prefect_sink() -> None:
    """Keep records of captured task runs away from Prefect's API log worker (the endpoint may
    not reach the API; they travel back with the result instead). Others pass through."""
    global _sink_installed
    if _sink_installed:
        return
    from prefect.logging import handlers

    previous = handlers._api_log_sink

    def sink(log: dict) -> None:
        task_run_id = log.get("task_run_id")
        if task_run_id and any(c.task_run_id == str(task_run_id) for c in list(_active.values())):
            return
        if previous is not None:
            previous(log)
        else:
            handlers.APILogWorker.instance().send(log)

    handlers.set_api_log_sink(sink)
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


# --- a minimal Prefect run context -------------------------------------------------------

def _prefect_context(meta: dict, fn: Callable, args: tuple, kwargs: dict) -> Any:
    """A ``TaskRunContext`` carrying what ``get_run_logger()`` and ``prefect.runtime.task_run``
    read (ids, names, run count, parameters, tags), or ``None`` without Prefect here.

    It has no API client and no result store: a body that calls other tasks or flows needs
    ``FederatedTaskRunner(remote_engine=True)``.
    """
    # Only when the body's module already brought Prefect in (unpickling a function that uses
    # ``get_run_logger`` imports it): plain functions do not pay Prefect's import time.
    if not meta or "prefect" not in sys.modules:
        return None
    from prefect.client.schemas.objects import TaskRun
    from prefect.context import TaskRunContext

    _install_prefect_sink()
    try:
        parameters = dict(inspect.signature(fn).bind_partial(*args, **kwargs).arguments)
    except (TypeError, ValueError):
        parameters = {}
    task_run = TaskRun.model_construct(
        id=uuid.UUID(meta["task_run_id"]), name=meta["task_run_name"],
        flow_run_id=uuid.UUID(meta["flow_run_id"]) if meta.get("flow_run_id") else None,
        task_key=meta.get("task_key", ""), dynamic_key=meta.get("dynamic_key", ""),
        run_count=meta.get("run_count", 1), tags=list(meta.get("tags", ())),
        task_inputs={}, empirical_policy=None, state=None,
    )
    task = types.SimpleNamespace(name=meta["task_name"], fn=fn, tags=set(meta.get("tags", ())),
                                 isasync=inspect.iscoroutinefunction(fn))
    return TaskRunContext.model_construct(
        task=task, task_run=task_run, parameters=parameters, log_prints=False,
        client=None, result_store=None, persist_result=False, input_keyset=None,
    )


# --- the bodies ----------------------------------------------------------------------------


class TaskBody:
    """The remote function of one Prefect task: runs ``fn`` with output capture.

    One instance per task function, so that fedcompute registers it once (the SDK caches
    function ids per object and per content).
    """

    def __init__(self, fn: Callable):
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", "task")
        self.__doc__ = getattr(fn, "__doc__", None)

    def __call__(self, meta: dict, args: tuple, kwargs: dict, level: int = logging.INFO) -> tuple:
        cap = _Capture(level, meta.get("task_run_id") if meta else None)
        try:
            with cap:
                ctx = _prefect_context(meta, self.fn, args, kwargs)
                if ctx is not None:
                    with ctx:
                        value = self._call(args, kwargs)
                else:
                    value = self._call(args, kwargs)
        except BaseException as exc:  # noqa: BLE001 - every failure goes back with its output
            exc.__traceback__ = _user_frames(exc.__traceback__)
            raise RemoteTaskError(serialize.pack_exception(exc), cap.finish()) from None
        return value, cap.finish()

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
    fedcompute once per task and runner rather than sent with every call.
    """

    def __init__(self, task: Any, context: dict):
        self.task = task
        self.context = context
        self.__name__ = f"prefect-engine:{getattr(task, 'name', 'task')}"

    def __call__(self, task_run_id: Any, parameters: dict, wait_for: Any,
                 dependencies: Any) -> Any:
        from prefect.context import hydrated_context
        from prefect.task_engine import run_task_async, run_task_sync

        kwargs = dict(task=self.task, task_run_id=task_run_id, parameters=parameters,
                      wait_for=wait_for, return_type="state", dependencies=dependencies)
        with hydrated_context(self.context):
            if self.task.isasync:
                state = asyncio.run(run_task_async(**kwargs))
            else:
                state = run_task_sync(**kwargs)
        return state
