"""Child processes that die with their parent, stopped politely, and one copy per folder.

* :func:`spawn` starts a child that gets a signal when its parent dies, however it dies
  (Linux ``PR_SET_PDEATHSIG``; even on SIGKILL, when no cleanup code runs).
* :func:`stop` asks a child to stop (SIGTERM), waits, then kills it.
* :class:`PidLock` makes a folder one process's: a second copy is refused with a message naming
  the running PID. The lock is an ``flock`` held for the process's life, so it cannot go stale.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True) \
    if sys.platform.startswith("linux") else None


def _die_with(parent: int, sig: int) -> Any:
    """What the child runs between fork and exec: as little Python as possible (the libc
    handle is loaded before the fork)."""

    def prepare() -> None:
        if _libc is not None:
            _libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return prepare


def spawn(args: list[str], *, death_signal: int = signal.SIGTERM, new_session: bool = True,
          **popen: Any) -> subprocess.Popen:
    """``subprocess.Popen(args, **popen)`` for a child that gets ``death_signal`` when this
    process dies. ``new_session`` keeps terminal signals (Ctrl-C) for the parent, which stops
    its children itself.

    The signal is tied to the thread that spawns: spawn from a thread that lives as long as
    the child should (the main thread, or a supervisor thread that stops its children
    before it ends)."""
    return subprocess.Popen(args, preexec_fn=_die_with(os.getpid(), death_signal),
                            start_new_session=new_session, **popen)


def on_stop_signals(callback: Callable[[], None],
                    signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
    """Call ``callback`` once, on a thread of its own, at the first of ``signals``.

    Not in the handler itself: a handler runs between two bytecodes of the main thread,
    which may hold the very lock ``callback`` takes (``Event.set`` inside ``Event.set``, when
    a second signal lands during the first one's handling, deadlocks for good). Later
    signals are ignored: the stop is under way."""
    fired = False

    def handler(signum: int, frame: object) -> None:
        nonlocal fired
        if fired:
            return
        fired = True
        threading.Thread(target=callback, daemon=True, name="fedcompute-stop-signal").start()

    for sig in signals:
        signal.signal(sig, handler)


def stop(proc: subprocess.Popen, timeout: float = 15.0, sig: int = signal.SIGTERM) -> int:
    """Send ``sig`` (SIGTERM: stop gracefully), wait up to ``timeout``, then SIGKILL.
    Returns the exit code."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def stop_all(procs: list[subprocess.Popen], timeout: float = 15.0) -> None:
    """:func:`stop` several children at once: all are asked, then waited for together."""
    for proc in procs:
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    for proc in procs:
        stop(proc, max(0.0, deadline - time.monotonic()))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_pid(pid: int, timeout: float = 15.0) -> None:
    """:func:`stop` for a process that is not our child (e.g. a daemon started earlier)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class AlreadyRunning(RuntimeError):
    """Another live process holds the lock."""

    def __init__(self, what: str, pid: int | None, path: Path):
        held = f"pid {pid}" if pid else "another process"
        super().__init__(f"{what} is already running ({held}; lock {path})")
        self.pid = pid


class PidLock:
    """An exclusive lock on ``path`` for as long as this process lives (or until
    :meth:`release`); the file says which PID holds it."""

    def __init__(self, path: Path, what: str):
        self.path = Path(path)
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> PidLock:
        """Take the lock, or raise :class:`AlreadyRunning` naming the holder's PID."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise AlreadyRunning(self.what, self.holder(), self.path) from None
        os.set_inheritable(fd, False)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def held_by(self) -> int | None:
        """The PID of the live process holding the lock, or None if nobody holds it (asking
        does not take it)."""
        if self._fd is not None:
            return os.getpid()
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return self.holder() or -1
        finally:
            os.close(fd)  # releases the shared lock if we got it
        return None

    def holder(self) -> int | None:
        """The PID written by the holder, if any."""
        try:
            return int(self.path.read_text().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None

    def __enter__(self) -> PidLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
