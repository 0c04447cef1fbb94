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
import socket
import sys
import threading
import time
from collections.abc import Callable

from fedcompute import errors, serialize
from fedcompute.output import set_live_writer

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


#: Live output (``stream_output=True``): a running task's output goes out at most this often,
#: at most ``OUTPUT_BATCH`` characters a batch and ``LIVE_LIMIT`` a task (what is cut is said).
OUTPUT_EVERY = 0.25
OUTPUT_BATCH = 64 * 1024
OUTPUT_TOPIC = "fedcompute-output"
#: Characters a task may stream: under the service's default ``max_output_bytes`` (1 MiB), so
#: that the notice of the cut gets through too.
LIVE_LIMIT = 1_000_000


class _Flusher:
    """One thread per process sends the pending output of every running task each
    ``OUTPUT_EVERY`` seconds (a thread per task cost short tasks a third of their rate)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: set[LiveOutput] = set()
        self._thread: threading.Thread | None = None

    def add(self, live: LiveOutput) -> None:
        with self._lock:
            self._live.add(live)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="fedcompute-output")
                self._thread.start()

    def discard(self, live: LiveOutput) -> None:
        with self._lock:
            self._live.discard(live)

    def _run(self) -> None:
        while True:
            time.sleep(OUTPUT_EVERY)
            with self._lock:
                live = list(self._live)
            for one in live:
                one.flush()


class LiveOutput:
    """A running task's output, sent in batches while it runs: ``send({"task_id", "seq",
    "items": [[stream, text], ...]})`` by the process's flusher thread, and once more at the
    end."""

    def __init__(self, task_id: str, send: Callable[[dict], None]):
        self.task_id = task_id
        self.send = send
        self.seq = 0
        self.sent = 0  # characters sent (or dropped) so far
        self._pending: list[list[str]] = []
        self._size = 0
        self._truncated = False
        self._lock = threading.Lock()
        self._sending = threading.Lock()  # batches leave in the order of their seq
        self._closed = threading.Event()
        _FLUSHER.add(self)

    def write(self, stream: str, text: str) -> None:
        if not text:
            return
        with self._lock:
            room = LIVE_LIMIT - self.sent - self._size
            if room <= 0:
                self._truncated = True
                return
            if len(text) > room:
                text, self._truncated = text[:room], True
            if self._pending and self._pending[-1][0] == stream:
                self._pending[-1][1] += text
            else:
                self._pending.append([stream, text])
            self._size += len(text)

    def flush(self, final: bool = False) -> None:
        """Send one batch of what is pending; ``final``: all of it (in batches)."""
        with self._sending:
            self._flush(final)

    def _flush(self, final: bool) -> None:
        while True:
            with self._lock:
                items, left, size = [], [], 0
                for stream, text in self._pending:
                    take = text[:max(OUTPUT_BATCH - size, 0)]
                    if take:
                        items.append([stream, take])
                        size += len(take)
                    if len(take) < len(text):
                        left.append([stream, text[len(take):]])
                self._pending, self._size = left, self._size - size
                self.sent += size
                if final and not left and self._truncated:
                    self._truncated = False
                    items.append(["stderr", f"[fedcompute: live output cut after {LIVE_LIMIT} "
                                            "characters]\n"])
                if not items:
                    return
                self.seq += 1
                batch = {"task_id": self.task_id, "seq": self.seq, "items": items}
            try:
                self.send(batch)
            except Exception as exc:  # noqa: BLE001 - live output is best effort
                logging.getLogger(__name__).debug("live output of %s not sent: %s",
                                                  self.task_id, exc)
            if not (final and left):
                return

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        _FLUSHER.discard(self)
        self.flush(final=True)


_FLUSHER = _Flusher()


class _Stream(io.StringIO):
    """A task's stdout or stderr: kept, and also handed to its live output."""

    def __init__(self, name: str, live: LiveOutput | None):
        super().__init__()
        self.name, self.live = name, live

    def write(self, text: str) -> int:
        if self.live is not None:
            self.live.write(self.name, text)
        return super().write(text)


class _Capture(logging.Handler):
    """Collect a task's stdout, stderr and log records (workers run one task per thread)."""

    def __init__(self, live: LiveOutput | None = None) -> None:
        super().__init__(logging.INFO)
        self.live = live
        self.out, self.err = _Stream("stdout", live), _Stream("stderr", live)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self._stack = contextlib.ExitStack()

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record) + "\n"
        if self.live is not None:
            self.live.write("log", line)
        io.StringIO.write(self.err, line)

    def __enter__(self) -> _Capture:
        if self.live is not None:
            set_live_writer(self.live.write)
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
        if self.live is not None:
            set_live_writer(None)
            self.live.close()


def run_task(task: LeasedTask, body: bytes, max_result_size: int,
             enforce_walltime: bool = True,
             send_output: Callable[[dict], None] | None = None) -> TaskResult:
    """Run one task; never raises (a failure is a result too). ``enforce_walltime=False``
    where the caller stops the task itself (a lane executor); ``send_output`` carries the
    live output of a task submitted with ``stream_output`` (see :class:`LiveOutput`)."""
    deadline = (task.options or {}).get("deadline")
    if deadline is not None and time.time() > deadline:  # the service may not know yet
        return TaskResult.failure(task.task_id, errors.DeadlineExceeded(
            "task did not start by its deadline"))
    # MPI keys or a container in the resource_specification: see launchers.py.
    if task.resource_specification and launchers.needs_launch(task.resource_specification):
        return launchers.run_launched(task, body, max_result_size, run_task)
    result = TaskResult(task.task_id, "failed", started=time.time())
    live = LiveOutput(task.task_id, send_output) if send_output and task.stream_output else None
    cap = _Capture(live) if task.capture_output or live else None
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
    if live is not None:
        live.close()  # (already, unless the task failed before it could start)
    if cap is not None:
        result.stdout = cap.out.getvalue()[-_MAX_OUTPUT:]
        result.stderr = cap.err.getvalue()[-_MAX_OUTPUT:]
    result.finished = time.time()
    return result


#: Dask path: tasks this worker runs (task id -> thread), and tasks asked to stop.
_running: dict[str, int] = {}
_stop_asked: set[str] = set()
_state_lock = threading.Lock()
#: A cancelled task that has not ended this long after its soft stop ends its worker (the
#: nanny starts a fresh one; the other tasks it held run again elsewhere).
CANCEL_GRACE = 2.0
STARTED_TOPIC = "fedcompute-started"


def _started(task: LeasedTask) -> None:
    """Tell the agent the task runs now, and where (a Dask event it subscribes to)."""
    try:
        from distributed import get_worker

        get_worker().log_event(STARTED_TOPIC, {"task_id": task.task_id,
                                               "host": socket.gethostname(),
                                               "pid": os.getpid()})
    except ValueError:  # not in a Dask worker
        pass




def _output_sender() -> Callable[[dict], None] | None:
    """Dask path: live output goes to the agent as Dask events of this worker (found here, in
    the task's thread: the batches go from a timer thread). The scheduler keeps only the last
    ``distributed.admin.low-level-log-length`` events of a topic."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except ValueError:  # not in a Dask worker
        return None
    return lambda batch: worker.log_event(OUTPUT_TOPIC, batch)


def run_chunk(tasks: list[LeasedTask], bodies: dict[str, bytes],
              max_result_size: int) -> list[TaskResult]:
    """Run a packed chunk of tasks in this worker; returns their results in order."""
    sys.setswitchinterval(0.005)
    send_output = _output_sender() if any(t.stream_output for t in tasks) else None
    results = []
    for task in tasks:
        with _state_lock:
            if task.task_id in _stop_asked:
                _stop_asked.discard(task.task_id)
                results.append(TaskResult.cancelled(task.task_id))
                continue
            _running[task.task_id] = threading.get_ident()
        _started(task)
        try:
            result = run_task(task, bodies[task.function_id], max_result_size,
                              send_output=send_output)
        finally:
            with _state_lock:
                _running.pop(task.task_id, None)
                stopped = task.task_id in _stop_asked
                _stop_asked.discard(task.task_id)
        if stopped and result.status == "failed":
            result = TaskResult.cancelled(task.task_id)
        results.append(result)
    return results


def stop_tasks(task_ids: list[str]) -> list[str]:
    """``Client.run(stop_tasks, ids)``: stop these tasks in this worker: a running one gets
    ``TaskCancelled`` raised in its thread (the worker ends if it does not stop within
    ``CANCEL_GRACE``), a queued one never starts. Returns the ids it runs."""
    found = []
    with _state_lock:
        _stop_asked.update(task_ids)
        for task_id in task_ids:
            ident = _running.get(task_id)
            if ident is not None:
                found.append(task_id)
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(ident), ctypes.py_object(errors.TaskCancelled))
    for task_id in found:
        timer = threading.Timer(CANCEL_GRACE, _end_if_still_running, (task_id,))
        timer.daemon = True
        timer.start()
    return found


def _end_if_still_running(task_id: str) -> None:
    with _state_lock:
        still = task_id in _running
    if still:
        os._exit(71)
