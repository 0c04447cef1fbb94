"""``RemoteFunctionOperator`` and ``RemoteShellOperator``: run an Airflow task on an endpoint."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import timedelta
from typing import Any, NoReturn

from airflow.sdk import BaseOperator, conf
from airflow.sdk.exceptions import AirflowException, AirflowTaskTimeout
from fedcompute import ShellFunction, ShellResult, TaskCancelled

from .hooks import FederatedComputeHook, RemoteOutputLog
from .triggers import RemoteTaskTrigger

#: XCom key under which the remote task id is pushed (next to ``return_value``).
XCOM_TASK_ID = "fedcompute_task_id"
#: How long a task waits for its remote result when neither ``timeout`` nor
#: ``execution_timeout`` is set: waiting is always bounded, so nothing can hang forever.
DEFAULT_TIMEOUT = timedelta(hours=24)
#: Extra time given to Airflow's own deferral timeout, so that the trigger's deadline (which
#: cancels the remote task and explains itself) always fires first.
_DEFER_GRACE = 60.0


def _materialize(value: Any) -> Any:
    """Turn Airflow's lazy XCom sequences (the output of mapped tasks) into lists: they hold a
    handle on the task runner and cannot travel to an endpoint."""
    try:
        from airflow.sdk.execution_time.lazy_sequence import LazyXComSequence
    except ImportError:  # pragma: no cover - other Airflow versions
        return value
    if isinstance(value, LazyXComSequence):
        # Indexing up to len() (one count request) avoids iteration's probe past the end,
        # which Airflow logs as an "XCom not found" error.
        return [_materialize(value[i]) for i in range(len(value))]
    if type(value) in (list, tuple):
        return type(value)(_materialize(v) for v in value)
    if type(value) is dict:
        return {k: _materialize(v) for k, v in value.items()}
    return value


def _seconds(value: timedelta | float | None) -> float | None:
    if value is None:
        return None
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class _RemoteOperator(BaseOperator):
    """Submit one fedcompute task, wait for it (in the worker or deferred), return its result."""

    template_fields: Sequence[str] = ("endpoint_id", "resource_specification")
    ui_color = "#d6eaf8"

    def __init__(self, *, endpoint_id: str | None = None,
                 fedcompute_conn_id: str = FederatedComputeHook.default_conn_name,
                 deferrable: bool = conf.getboolean("operators", "default_deferrable",
                                                    fallback=False),
                 poll_interval: float = 5.0, timeout: timedelta | float | None = None,
                 resource_specification: dict | None = None, capture_output: bool = True,
                 stream_output: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self.endpoint_id = endpoint_id
        self.fedcompute_conn_id = fedcompute_conn_id
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.resource_specification = resource_specification
        self.capture_output = capture_output
        self.stream_output = stream_output
        self._remote_task_id: str | None = None
        self._killed = False
        self._canceller: threading.Thread | None = None
        self._hook: FederatedComputeHook | None = None

    # --- what subclasses define ----------------------------------------------------------

    def remote_call(self) -> tuple[Callable, Sequence, Mapping]:
        """``(function, args, kwargs)`` to run remotely (after templates are rendered)."""
        raise NotImplementedError

    def process_result(self, value: Any) -> Any:
        """Turn the remote return value into this task's return value (its XCom)."""
        return value

    # --- helpers -----------------------------------------------------------------------

    @property
    def hook(self) -> FederatedComputeHook:
        if self._hook is None:
            self._hook = FederatedComputeHook(self.fedcompute_conn_id)
        return self._hook

    def _timeout_seconds(self) -> tuple[float, bool]:
        """(seconds to wait, whether the user bounded the task themselves)."""
        explicit = _seconds(self.timeout) or _seconds(self.execution_timeout)
        return (explicit, True) if explicit else (DEFAULT_TIMEOUT.total_seconds(), False)

    def _spec(self, timeout: float, explicit: bool) -> dict | None:
        spec = dict(self.resource_specification or {})
        if explicit:
            # The task cannot outlive its Airflow timeout on the endpoint either.
            spec.setdefault("walltime", timeout)
        return spec or None

    # --- execution ---------------------------------------------------------------------

    def execute(self, context: Any) -> Any:
        fn, args, kwargs = self.remote_call()
        timeout, explicit = self._timeout_seconds()
        deadline = time.time() + timeout
        self._killed = False
        self._canceller = None
        task_id, group = self.hook.submit(
            fn, args, kwargs, endpoint_id=self.endpoint_id, capture_output=self.capture_output,
            stream_output=self.stream_output, resource_specification=self._spec(timeout, explicit))
        self._remote_task_id = task_id
        self.log.info("Submitted remote task %s (endpoint %s); waiting up to %.0fs%s", task_id,
                      self.endpoint_id or self.hook.endpoint_id, timeout,
                      " in the triggerer" if self.deferrable else "")
        context["ti"].xcom_push(key=XCOM_TASK_ID, value=task_id)
        if self.deferrable:
            self.defer(
                trigger=RemoteTaskTrigger(task_id, group, deadline, self.fedcompute_conn_id,
                                          self.poll_interval, self.stream_output),
                method_name="execute_complete",
                timeout=timedelta(seconds=timeout + _DEFER_GRACE))
        show = RemoteOutputLog(self.log)  # the remote task's lines, as they come
        finished = self.hook.wait(task_id, group, timeout, self.poll_interval,
                                  should_stop=lambda: self._killed,
                                  on_output=show if self.stream_output else None)
        show.end()
        if self._killed:
            if self._canceller is not None:
                self._canceller.join(30)
            raise AirflowException(f"task killed; remote task {task_id} cancellation requested")
        if not finished:
            self._timed_out(task_id, timeout)
        return self._outcome(task_id)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        """Resume after :class:`RemoteTaskTrigger` fired: return the result or raise."""
        task_id = event["task_id"]
        self._remote_task_id = task_id
        status = event.get("status")
        if status == "timeout":
            self._timed_out(task_id, self._timeout_seconds()[0])
        if status == "error":
            self._cancel(task_id)
            raise AirflowException(f"waiting for remote task {task_id} failed: "
                                   f"{event.get('message')}")
        return self._outcome(task_id)

    def _outcome(self, task_id: str) -> Any:
        info = self.hook.get_task(task_id)
        self._remote_task_id = None  # finished: nothing left for on_kill to cancel
        for stream in ("stdout", "stderr"):
            if info.get(stream) and not self.stream_output:  # else shown as it came
                self.log.info("Remote %s of task %s:\n%s", stream, task_id,
                              info[stream].rstrip("\n"))
        if "exception" in info:
            exc = info["exception"]
            if isinstance(exc, TaskCancelled):
                raise AirflowException(f"remote task {task_id} was cancelled") from exc
            remote_tb = getattr(exc, "remote_traceback", None) or str(exc)
            self.log.error("Remote task %s failed on endpoint %s with %s. Remote traceback:\n%s",
                           task_id, info.get("endpoint_id"), type(exc).__name__, remote_tb)
            if not isinstance(exc, Exception):  # e.g. a remote SystemExit: not ours to raise
                raise AirflowException(f"remote task {task_id} raised {exc!r}") from exc
            raise exc
        return self.process_result(info["result"])

    def _timed_out(self, task_id: str, timeout: float) -> NoReturn:
        status = self._cancel(task_id)
        raise AirflowTaskTimeout(f"remote task {task_id} did not finish within {timeout:.0f}s "
                                 f"(its status: {status})")

    def _cancel(self, task_id: str) -> str:
        """Best-effort cancel through a fresh client (``on_kill`` may run in a signal handler
        that interrupted the hook's own client mid-request)."""
        hook = FederatedComputeHook(self.fedcompute_conn_id, settings=self.hook.settings)
        try:
            status = hook.cancel(task_id)
        except Exception as exc:  # noqa: BLE001 - never mask the reason the task is stopping
            self.log.warning("could not cancel remote task %s: %s", task_id, exc)
            return "unknown"
        finally:
            hook.close()
        if status == "cancelled":
            self.log.info("Cancelled remote task %s", task_id)
        elif status == "cancelling":
            self.log.info("Cancelled remote task %s: it was running, its endpoint stops it",
                          task_id)
        else:
            self.log.warning("Remote task %s is %s and can no longer be cancelled", task_id,
                             status)
        return status

    def on_kill(self) -> None:
        """Cancel the remote task when Airflow kills this one (or its execution times out).

        Airflow calls this from its SIGTERM handler, which may have interrupted the main thread
        while it held a lock (the log writer's, say): the cancel request and its log lines go to
        a helper thread, waited for briefly here and again when ``execute`` unwinds.
        """
        task_id = self._remote_task_id
        self._killed = True
        if task_id and self._canceller is None:
            self._canceller = threading.Thread(target=self._cancel, args=(task_id,),
                                               name="fedcompute-cancel", daemon=True)
            self._canceller.start()
            self._canceller.join(10)


class RemoteFunctionOperator(_RemoteOperator):
    """Run ``python_callable(*op_args, **op_kwargs)`` on a fedcompute endpoint.

    Like ``PythonOperator``, but the call happens on the endpoint (a lab server, an HPC cluster
    behind a firewall...). The return value becomes the ``return_value`` XCom and the remote
    task id is pushed as ``fedcompute_task_id``; remote stdout/stderr and tracebacks land in
    the task log.

    :param python_callable: the function to run (pickled by value if the endpoint cannot
        import its module, e.g. when it is defined in the DAG file)
    :param op_args: positional arguments (templated)
    :param op_kwargs: keyword arguments (templated)
    :param endpoint_id: the endpoint (templated); default: the connection's ``endpoint_id``
    :param fedcompute_conn_id: Airflow connection of type ``fedcompute``
    :param deferrable: wait in the triggerer instead of a worker slot (default: Airflow's
        ``[operators] default_deferrable``)
    :param poll_interval: longest single wait (a long-poll that returns as soon as the task
        finishes), in seconds
    :param timeout: how long to wait for the result (default: ``execution_timeout``, else
        24 hours); when set, it is also the remote task's walltime
    :param resource_specification: per-task resources for the endpoint (templated)
    :param capture_output: capture the remote stdout/stderr into the task log
    :param stream_output: write the remote stdout, stderr and logging lines to the task log
        while the remote task runs (in the worker; in deferrable mode the triggerer logs them,
        and Airflow 3 shows those lines in the task's log)
    """

    template_fields: Sequence[str] = ("op_args", "op_kwargs", *_RemoteOperator.template_fields)
    template_fields_renderers = {"op_args": "py", "op_kwargs": "py"}

    def __init__(self, *, python_callable: Callable, op_args: Collection[Any] | None = None,
                 op_kwargs: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        if not callable(python_callable):
            raise AirflowException("`python_callable` param must be callable")
        super().__init__(**kwargs)
        self.python_callable = python_callable
        self.op_args = op_args or ()
        self.op_kwargs = op_kwargs or {}

    def remote_call(self) -> tuple[Callable, Sequence, Mapping]:
        return (self.python_callable, tuple(_materialize(list(self.op_args))),
                _materialize(dict(self.op_kwargs)))


class RemoteShellOperator(_RemoteOperator):
    """Run a shell command on a fedcompute endpoint (a :class:`fedcompute.ShellFunction`).

    ``command`` is templated by Airflow, then formatted with ``format_kwargs`` on the endpoint
    (``"gzip {path}"``). The command's stdout is the task's return value; a non-zero exit code
    fails the task (unless listed in ``ok_exit_codes``) with the command's stderr in the log.

    :param command: shell command (templated)
    :param format_kwargs: values for ``{placeholders}`` in the command (templated)
    :param env: extra environment variables (templated)
    :param cwd: working directory on the endpoint (templated)
    :param walltime: stop the command after this many seconds (exit code 124)
    :param ok_exit_codes: exit codes that count as success
    """

    template_fields: Sequence[str] = ("command", "format_kwargs", "env", "cwd",
                                      *_RemoteOperator.template_fields)
    template_fields_renderers = {"command": "bash", "format_kwargs": "py", "env": "json"}
    ui_color = "#e8f0f8"

    def __init__(self, *, command: str, format_kwargs: Mapping[str, Any] | None = None,
                 env: dict[str, str] | None = None, cwd: str | None = None,
                 walltime: float | None = None, ok_exit_codes: Collection[int] = (0,),
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.command = command
        self.format_kwargs = format_kwargs or {}
        self.env = env
        self.cwd = cwd
        self.walltime = walltime
        self.ok_exit_codes = tuple(ok_exit_codes)

    def remote_call(self) -> tuple[Callable, Sequence, Mapping]:
        fn = ShellFunction(self.command, walltime=self.walltime, cwd=self.cwd, env=self.env)
        return fn, (), _materialize(dict(self.format_kwargs))

    def process_result(self, value: ShellResult) -> str:
        self.log.info("Command: %s\nexit code: %s", value.cmd, value.returncode)
        if value.stdout:
            self.log.info("Command stdout:\n%s", value.stdout.rstrip("\n"))
        if value.stderr:
            self.log.info("Command stderr:\n%s", value.stderr.rstrip("\n"))
        if value.returncode not in self.ok_exit_codes:
            raise AirflowException(f"command exited with code {value.returncode}: "
                                   f"{value.stderr.strip()[-2000:]}")
        return value.stdout.rstrip("\n")
