"""What runs inside a Dask worker: a packed chunk of tasks, one after another.

Packing several tasks into one Dask task keeps Dask's ~1-2 ms per-task overhead off short
functions. Functions are deserialized once per worker process and cached by id.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import sys
import threading
import time
from collections.abc import Callable

from fedcompute import errors, serialize

from . import launchers  # issue 15: MPI launches and per-task containers
from .records import LeasedTask, TaskResult

_functions: dict[str, Callable] = {}
_MAX_OUTPUT = 1024 * 1024
#: After a walltime's soft stop (an exception raised in the task's thread), how long the task
#: may take to unwind before the worker process is ended (the nanny starts a fresh one).
WALLTIME_GRACE = 5.0


def _function(function_id: str, body: bytes) -> Callable:
    fn = _functions.get(function_id)
    if fn is None:
        fn = serialize.loads(body)
        if len(_functions) > 512:
            _functions.clear()
        _functions[function_id] = fn
    return fn


class _Walltime:
    """Stop the current thread's task after ``seconds``: first softly, then the whole process."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.timers: list[threading.Timer] = []

    def __enter__(self) -> _Walltime:
        if self.seconds:
            ident = threading.get_ident()
            soft = threading.Timer(self.seconds, _raise_in, (ident,))
            hard = threading.Timer(self.seconds + WALLTIME_GRACE, os._exit, (70,))
            self.timers = [soft, hard]
            for t in self.timers:
                t.daemon = True
                t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for t in self.timers:
            t.cancel()


def _raise_in(ident: int) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident),
                                               ctypes.py_object(errors.WalltimeExceeded))


class _Capture(logging.Handler):
    """Collect a task's stdout, stderr and log records (workers run one task per thread)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.out, self.err = io.StringIO(), io.StringIO()
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self._stack = contextlib.ExitStack()

    def emit(self, record: logging.LogRecord) -> None:
        self.err.write(self.format(record) + "\n")

    def __enter__(self) -> _Capture:
        self._stack.enter_context(contextlib.redirect_stdout(self.out))
        self._stack.enter_context(contextlib.redirect_stderr(self.err))
        root = logging.getLogger()
        # Dask workers keep the root logger at WARNING; the task's INFO records count too.
        self._level = root.level
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
        root.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        root = logging.getLogger()
        root.removeHandler(self)
        root.setLevel(self._level)
        self._stack.close()


def run_task(task: LeasedTask, body: bytes, max_result_size: int,
             enforce_walltime: bool = True) -> TaskResult:
    """Run one task; never raises (a failure is a result too). ``enforce_walltime=False``
    where the caller stops the task itself (a lane executor)."""
    # Issue 15: MPI keys or a container in resource_specification (see launchers.py).
    if task.resource_specification and launchers.needs_launch(task.resource_specification):
        return launchers.run_launched(task, body, max_result_size, run_task)
    result = TaskResult(task.task_id, "failed", started=time.time())
    cap = _Capture() if task.capture_output else None
    try:
        fn = _function(task.function_id, body)
        args, kwargs = serialize.loads(task.payload)
        with _Walltime(task.walltime if enforce_walltime else None), \
                cap or contextlib.nullcontext():
            value = fn(*args, **kwargs)
        data = serialize.dumps(value)
        if len(data) > max_result_size:
            raise errors.ResultTooLarge(
                f"result is {len(data)} bytes; this endpoint's max_result_size is "
                f"{max_result_size} bytes")
        result.status, result.result = "success", data
    except BaseException as exc:  # noqa: BLE001 - SystemExit from user code fails the task too
        if isinstance(exc, errors.WalltimeExceeded) and not exc.args:
            exc = errors.WalltimeExceeded(f"task ran past its walltime of {task.walltime}s")
        exc.__traceback__ = exc.__traceback__ and (exc.__traceback__.tb_next or exc.__traceback__)
        result.exception = serialize.pack_exception(exc)
    if cap is not None:
        result.stdout = cap.out.getvalue()[-_MAX_OUTPUT:]
        result.stderr = cap.err.getvalue()[-_MAX_OUTPUT:]
    result.finished = time.time()
    return result


def run_chunk(tasks: list[LeasedTask], bodies: dict[str, bytes],
              max_result_size: int) -> list[TaskResult]:
    """Run a packed chunk of tasks in this worker; returns their results in order."""
    sys.setswitchinterval(0.005)
    return [run_task(t, bodies[t.function_id], max_result_size) for t in tasks]
