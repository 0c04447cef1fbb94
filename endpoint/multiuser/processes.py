"""The manager's user processes: one per (service user, ``user_endpoint_config``), each run as
the mapped local account, fed tasks over a pipe, stopped when idle.

:class:`UserProcesses` stands where a single-user agent has its Dask engine (the agent starts,
follows and closes it the same way) and is what the :class:`~.dispatcher.MultiUserDispatcher`
routes tasks to. A user process is started with :func:`fedcompute.process.spawn`, so it gets
SIGTERM when the manager dies however it dies, and its stdin closes then too; its Dask workers
end with it. Threads per user process: a writer (the pipe may be full while its engine starts;
the lease loop must not wait for that) and a reader (results, task states, its end).

(Longer than our ~400-line guide: a user process's life — start as the mapped account, feed,
read, idle stop, death — is one state machine; split, its locking would cross modules.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedcompute import process, serialize
from fedcompute.protocol import TaskResult as ResultMessage
from pydantic import ValidationError

from ..config import EndpointConfig
from ..engines import get_engine
from ..records import LeasedTask, TaskResult
from .errors import IdentityMappingError, UserConfigError, UserProcessError
from .identity import IdentityMapper, LocalUser
from .protocol import FrameWriter, read_frames
from .template import UserConfigTemplate, UserProcessConfig
from .workdir import prepare_root, unreachable_ancestor, user_folder

log = logging.getLogger(__name__)

#: A user process that failed to start is not tried again for the same config for this long
#: (its error is given to the tasks meanwhile).
FAILED_HOLD = 30.0
#: How long a stopped user process may take to exit before it is killed.
STOP_GRACE = 15.0
#: Environment variables a user process inherits from the manager (nothing else: the
#: manager's credentials must not reach users).
PASSED_ENV = ("PATH", "LANG", "LC_ALL", "TZ")
#: States a user process may report for its tasks.
MARKS = frozenset({"running", "waiting-for-nodes"})

Results = Callable[[list[TaskResult]], None]
Marks = Callable[[str, list[str]], None]


def config_key(owner: str, user_config: dict[str, Any] | None) -> str:
    """Which user process runs a task: its owner and its user_endpoint_config, canonically."""
    text = json.dumps([owner, user_config or {}], sort_keys=True, separators=(",", ":"),
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _checked(task_id: str, data: dict[str, Any]) -> TaskResult:
    """A user process's result as the service takes it, or a failure saying why not: one bad
    result must not hold up the batches of every user's results it would be sent in."""
    try:
        ResultMessage.model_validate(data)
        return TaskResult.from_wire(data)
    except (ValidationError, KeyError, TypeError) as exc:
        return TaskResult.failure(task_id, UserProcessError(
            f"the user process sent a malformed result for this task: {exc}"))


class UserProcess:
    """One user process: started as ``user``, fed over its stdin, read from its stdout."""

    def __init__(self, key: str, owner: str, user: LocalUser, config: UserProcessConfig,
                 folder: Path, start_frame: dict[str, Any], env: dict[str, str],
                 on_results: Results, on_mark: Marks, on_exit: Callable[[UserProcess], None]):
        self.key, self.owner, self.user, self.config = key, owner, user, config
        self.folder = folder  # the user's private folder (the process's cwd)
        self.env = env
        self.on_results, self.on_mark, self.on_exit = on_results, on_mark, on_exit
        #: Live output batches of its tasks (``stream_output``), set by the manager.
        self.on_output: Callable[[list[dict]], None] = lambda batches: None
        self.state = "starting"  # -> ready | failed; -> retiring -> exited
        self.workers = 0
        self.error: UserProcessError | None = None
        self.failed_at = 0.0
        self.retired_at = 0.0
        self.last_active = time.monotonic()
        #: Results of tasks still here are dropped (the manager handed them back).
        self.abandoned = False
        self.proc: subprocess.Popen | None = None
        self._outstanding: set[str] = set()
        self._ended = False
        self._lock = threading.Lock()
        self._outbox: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._outbox.put(start_frame)

    # --- manager side --------------------------------------------------------------------

    def start(self) -> None:
        """Spawn the process (call from a thread that lives as long as it should: the death
        signal is tied to the spawning thread)."""
        args = [sys.executable, "-P", "-m", "fedcompute.endpoint.multiuser.child"]
        popen: dict[str, Any] = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE,
                                 "cwd": str(self.folder), "env": self.env, "bufsize": 0}
        if self.user.uid != os.geteuid():
            if os.geteuid() != 0:
                raise IdentityMappingError(
                    f"this endpoint runs as uid {os.geteuid()}, not root: it cannot run tasks "
                    f"as {self.user.name!r} (uid {self.user.uid})")
            # extra_groups always: the root manager's own groups must not be kept.
            popen.update(user=self.user.uid, group=self.user.gid,
                         extra_groups=list(self.user.groups))
        try:
            self.proc = process.spawn(args, **popen)
        except OSError as exc:
            blocked = unreachable_ancestor(Path(os.path.realpath(sys.executable)))
            hint = (f"; {blocked} is not searchable by other users (chmod o+x {blocked})"
                    if blocked else "")
            raise UserProcessError(
                f"cannot start a user process as {self.user.name!r}: {exc} (the endpoint's "
                f"Python {sys.executable} must be runnable by local users{hint})") from None
        log.info("user process %s for %s started as %s (pid %d)", self.key, self.owner,
                 self.user.name, self.proc.pid)
        for target, name in ((self._write, "writer"), (self._read, "reader")):
            threading.Thread(target=target, name=f"fedcompute-user-{name}-{self.key}",
                             daemon=True).start()

    @property
    def accepting(self) -> bool:
        return self.state in ("starting", "ready")

    def submit(self, tasks: list[LeasedTask], functions: dict[str, bytes]) -> None:
        with self._lock:
            if self._ended:  # its end was handled: nothing would fail these tasks
                raise self.error or UserProcessError(
                    f"the user process for {self.owner!r} has ended")
            self._outstanding.update(t.task_id for t in tasks)
            self.last_active = time.monotonic()
        self._outbox.put({"op": "tasks", "functions": functions, "tasks": [
            {"task_id": t.task_id, "function_id": t.function_id, "payload": t.payload,
             "resource_specification": t.resource_specification, "options": t.options,
             "attempt": t.attempt, "owner": t.owner} for t in tasks]})

    def outstanding(self) -> int:
        with self._lock:
            return len(self._outstanding)

    def idle_seconds(self) -> float:
        with self._lock:
            return 0.0 if self._outstanding else time.monotonic() - self.last_active

    def retire(self) -> None:
        """Ask it to finish and exit (the caller has stopped routing tasks to it)."""
        if self.state in ("retiring", "exited"):
            return
        if self.state != "failed":
            self.state = "retiring"
        self.retired_at = time.monotonic()
        self._outbox.put({"op": "stop"})
        self._outbox.put(None)

    def cancel(self) -> None:
        self.abandoned = True
        self._outbox.put({"op": "cancel"})

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # --- threads -------------------------------------------------------------------------

    def _write(self) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        writer = FrameWriter(self.proc.stdin)
        while True:
            frame = self._outbox.get()
            if frame is None:
                break
            try:
                writer.write(frame)
            except OSError:
                break  # it is gone: the reader reports that
        writer.close()  # its stdin ends: it stops even if it missed the stop frame

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for frame in read_frames(self.proc.stdout):
            try:
                self._frame(frame)
            except Exception as exc:  # noqa: BLE001 - it runs as its user: never trust it
                log.warning("user process %s sent a bad %r frame: %s", self.key,
                            frame.get("op"), exc)
        code = self.proc.wait()
        if self.state not in ("failed", "retiring"):
            self.error = UserProcessError(
                f"the user process for {self.owner!r} (local account {self.user.name!r}) "
                f"exited with code {code} while this task was in it; its log: "
                f"{self.folder / self.key / 'process.log'}")
        self.state = "exited" if self.state != "failed" else "failed"
        with self._lock:
            left = list(self._outstanding)
            self._outstanding.clear()
            self._ended = True
        if left and not self.abandoned:
            error = self.error or UserProcessError(
                f"the user process for {self.owner!r} stopped before running this task")
            envelope = serialize.pack_exception(error)
            self.on_results([TaskResult(t, "failed", exception=envelope) for t in left])
        log.info("user process %s for %s exited with code %d", self.key, self.owner, code)
        self.on_exit(self)

    def _frame(self, frame: dict[str, Any]) -> None:
        op = frame["op"]
        if op == "results":
            self._results(list(frame.get("results") or []))
        elif op == "mark":
            self._mark(frame)
        elif op == "output":
            self._output(frame)
        elif op == "workers":
            self.workers = int(frame.get("workers") or 0)
        elif op == "ready":
            self.workers = int(frame.get("workers") or 0)
            if self.state == "starting":
                self.state = "ready"
            log.info("user process %s for %s ready: %d workers", self.key, self.owner,
                     self.workers)
        elif op == "failed":
            self._failed(dict(frame.get("error") or {}))

    def _results(self, wire: list[dict[str, Any]]) -> None:
        results = []
        with self._lock:
            for data in wire:
                task_id = data.get("task_id") if isinstance(data, dict) else None
                # A user process may only report its own tasks (it runs as its user).
                if not isinstance(task_id, str) or task_id not in self._outstanding:
                    continue
                self._outstanding.discard(task_id)
                results.append(_checked(task_id, data))
            self.last_active = time.monotonic()
        if results and not self.abandoned:
            self.on_results(results)

    def _mark(self, frame: dict[str, Any]) -> None:
        state = frame.get("state")
        with self._lock:
            ids = [t for t in frame.get("task_ids") or ()
                   if isinstance(t, str) and t in self._outstanding]
        if state in MARKS and ids and not self.abandoned:
            self.on_mark(state, ids)

    def _output(self, frame: dict[str, Any]) -> None:
        with self._lock:  # (its own tasks only, as for results)
            batches = [b for b in frame.get("batches") or ()
                       if isinstance(b, dict) and b.get("task_id") in self._outstanding]
        if batches and not self.abandoned:
            self.on_output(batches)

    def _failed(self, envelope: dict[str, Any]) -> None:
        kind = str(envelope.get("type") or "Exception").removeprefix("builtins.")
        what = f"{kind}: {envelope.get('message', '')}"
        self.error = UserProcessError(
            f"the user process for {self.owner!r} (local account {self.user.name!r}) did not "
            f"start: {what}")
        self.state, self.failed_at = "failed", time.monotonic()
        log.warning("user process %s for %s did not start: %s", self.key, self.owner, what)


class UserProcesses:
    """A multi-user manager's "engine": the user processes, found or started per task."""

    name = "multi-user"
    cluster = None
    client = None

    def __init__(self, config: EndpointConfig, workdir: Path):
        assert config.identity_mapping is not None  # EndpointConfig checks it
        self.config = config
        self.workdir = Path(workdir)
        self.mapper = IdentityMapper(config.identity_mapping, self.workdir)
        schema = config.user_config_schema
        self.template = UserConfigTemplate(self.workdir / config.user_config_template,
                                           self.workdir / schema if schema else None)
        self.root = Path(config.user_work_root or self.workdir / "users")
        self.on_results: Results = lambda results: None
        self.on_mark: Marks = lambda state, ids: None
        self.on_output: Callable[[list[dict]], None] = lambda batches: None
        self._by_key: dict[str, UserProcess] = {}  # routable (and failed, held)
        self._live: set[UserProcess] = set()  # every process not yet exited
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._reaper: threading.Thread | None = None

    def attach(self, on_results: Results, on_mark: Marks) -> None:
        self.on_results, self.on_mark = on_results, on_mark

    # --- the engine interface the agent uses ---------------------------------------------

    def start(self) -> None:
        self.template.check_files()
        if self.config.engine != {"type": "local"}:
            log.warning("multi_user: this config's engine: is not used; each user process's "
                        "engine comes from %s", self.template.template_path)
        if os.geteuid() == 0:
            self._close_endpoint_folder()
        prepare_root(self.root)
        self._reaper = threading.Thread(target=self._reap, name="fedcompute-user-reaper",
                                        daemon=True)
        self._reaper.start()
        log.info("multi-user endpoint: users' folders under %s, idle timeout %.0fs",
                 self.root, self.config.idle_timeout)

    def _close_endpoint_folder(self) -> None:
        """Users reach their folders through the endpoint's, and nothing else in it: not its
        log, nor the spool of everyone's results waiting to be sent."""
        os.chmod(self.workdir, 0o711)
        for entry in self.workdir.iterdir():
            if entry.is_symlink() or entry == self.root:
                continue
            os.chmod(entry, stat.S_IMODE(entry.stat().st_mode) & ~0o077)

    def worker_count(self) -> int:
        with self._lock:
            return sum(p.workers for p in self._live if p.state == "ready")

    def total_threads(self) -> int:
        return self.worker_count()

    def status(self) -> dict[str, Any]:
        with self._lock:
            running = [p for p in self._live if p.accepting]
        return {"engine": self.name, "user_processes": len(running),
                "workers": sum(p.workers for p in running if p.state == "ready")}

    def scale_for(self, outstanding_tasks: int) -> None:
        """User processes scale their own engines."""

    def cancel_all(self) -> None:
        with self._lock:
            procs = list(self._live)
        for proc in procs:
            proc.cancel()

    def close(self) -> None:
        """Stop every user process: ask, wait, then signal."""
        self._stopping.set()
        with self._lock:
            procs = list(self._live)
            self._by_key.clear()
        for proc in procs:
            proc.retire()
        deadline = time.monotonic() + STOP_GRACE
        for proc in procs:
            if proc.proc is not None:
                try:
                    proc.proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        process.stop_all([p.proc for p in procs if p.proc is not None], timeout=5.0)
        if self._reaper is not None:
            self._reaper.join(timeout=5)

    # --- routing -------------------------------------------------------------------------

    def submit(self, owner: str, user_config: dict[str, Any] | None,
               tasks: list[LeasedTask], functions: dict[str, bytes]) -> UserProcess:
        """Hand ``tasks`` to the user process for (owner, user_config), starting it if need
        be. Raises IdentityMappingError, UserConfigError or UserProcessError."""
        key = config_key(owner, user_config)
        with self._lock:
            if self._stopping.is_set():
                raise UserProcessError("the endpoint is stopping")
            proc = self._by_key.get(key)
            if proc is not None and proc.state == "failed":
                if time.monotonic() - proc.failed_at < FAILED_HOLD:
                    assert proc.error is not None
                    raise proc.error
                del self._by_key[key]
                proc = None
            if proc is None or not proc.accepting:
                proc = self._start(key, owner, user_config)
                self._by_key[key] = proc
                self._live.add(proc)
            proc.submit(tasks, functions)
            return proc

    def _start(self, key: str, owner: str, user_config: dict[str, Any] | None) -> UserProcess:
        user = self.mapper.map(owner)
        self._make_room(owner)
        folder = user_folder(self.root, user)
        context = {"owner": owner, "user": user.template_context(), "workdir": str(folder),
                   "endpoint_dir": str(self.workdir)}
        rendered = self.template.render(user_config, context)
        try:  # options checked here, so the submitter hears of a bad one at once
            get_engine(rendered.engine, folder / key, container=rendered.container)
        except (ValueError, TypeError) as exc:
            raise UserConfigError(f"the user process's engine cannot be built from this "
                                  f"user_endpoint_config: {exc}") from None
        settings = {"max_result_size": self.config.max_result_size,
                    "chunk_target_seconds": self.config.chunk_target_seconds,
                    "max_chunk": self.config.max_chunk,
                    "task_walltime": self.config.task_walltime}
        start_frame = {"op": "start", "owner": owner, "workdir": str(folder / key),
                       "config": rendered.model_dump(exclude_none=True), "settings": settings}
        proc = UserProcess(key, owner, user, rendered, folder, start_frame,
                           self._env(user, folder), self.on_results, self.on_mark,
                           self._exited)
        proc.on_output = lambda batches: self.on_output(batches)
        proc.start()
        return proc

    def _env(self, user: LocalUser, folder: Path) -> dict[str, str]:
        env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
        env.setdefault("PATH", os.defpath)
        env.update(HOME=user.home, USER=user.name, LOGNAME=user.name,
                   SHELL=user.shell or "/bin/sh")
        env.update(self.config.user_environment)
        return env

    def _make_room(self, owner: str) -> None:
        """At most max_user_processes per service user: retire idle ones, least recently
        used first, or refuse."""
        mine = [p for p in self._by_key.values() if p.owner == owner and p.accepting]
        excess = len(mine) + 1 - self.config.max_user_processes
        if excess <= 0:
            return
        idle = sorted((p for p in mine if p.outstanding() == 0), key=lambda p: p.last_active)
        if len(idle) < excess:
            raise UserProcessError(
                f"user {owner!r} has {len(mine)} user processes busy on this endpoint (one per "
                f"distinct user_endpoint_config; max_user_processes: "
                f"{self.config.max_user_processes}); reuse a config or wait for them")
        for proc in idle[:excess]:
            self._by_key.pop(proc.key, None)
            proc.retire()

    def _exited(self, proc: UserProcess) -> None:
        with self._lock:
            self._live.discard(proc)
            if self._by_key.get(proc.key) is proc and proc.state != "failed":
                del self._by_key[proc.key]

    def _reap(self) -> None:
        """Retire user processes idle for idle_timeout; kill those that do not exit."""
        timeout = self.config.idle_timeout
        while not self._stopping.wait(min(1.0, timeout / 4)):
            with self._lock:
                for key, proc in list(self._by_key.items()):
                    if proc.accepting and proc.idle_seconds() >= timeout:
                        log.info("user process %s for %s idle for %.0fs: stopping it", key,
                                 proc.owner, timeout)
                        del self._by_key[key]
                        proc.retire()
                    elif proc.state == "failed" and \
                            time.monotonic() - proc.failed_at >= FAILED_HOLD:
                        del self._by_key[key]
                stuck = [p for p in self._live if p.retired_at and p.alive()
                         and time.monotonic() - p.retired_at > STOP_GRACE]
            for proc in stuck:
                log.warning("user process %s did not stop; killing it", proc.key)
                process.stop(proc.proc, timeout=5.0)


__all__ = ["UserProcess", "UserProcesses", "config_key"]
