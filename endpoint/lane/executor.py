"""A lane's executor: a child process of a Dask worker that runs one task at a time.

Running tasks in a process of their own lets the lane stop one at once and cleanly: a walltime
or a cancellation is a signal that raises ``WalltimeExceeded`` / ``TaskCancelled`` in the task
(even in ``time.sleep``), then SIGKILL after a grace period; a task that kills its process
(``os._exit``, a segfault) takes only itself down. The lane starts a fresh executor after.

``python -m fedcompute.endpoint.lane.executor MAX_RESULT_SIZE STOP_FD``: frames on
stdin/stdout, a batch ``[[task, body], ...]`` in, one result out per task, in order (a batch
saves the lane a pipe round trip and two thread wake-ups per task). Before it signals, the
lane writes the id of the task to stop on the ``STOP_FD`` pipe: the signal stops that task if it
runs, and a task of the batch not started yet is skipped (reported cancelled). The task's own
output never reaches the frames: fd 1 is moved away first.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from fedcompute import errors

#: Signals the lane sends to stop the task running here.
STOP_WALLTIME = signal.SIGUSR1
STOP_CANCEL = signal.SIGUSR2

_running = False
_current = ""  # the id of the task running now
_walltime: float | None = None  # of the task running now
_frames = None
_seceded = False
_stop_fd = -1
_stops: set[str] = set()  # ids the lane asked to stop (see the module's docstring)
_stop_buf = b""
_reading = _again = False


def _read_stops() -> None:
    global _reading, _again
    if _reading:  # a second signal inside the first's handler: the first one reads again
        _again = True
        return
    _reading = True
    try:
        while True:
            _again = False
            _read_stop_pipe()
            if not _again:
                break
    finally:
        _reading = False


def _read_stop_pipe() -> None:
    global _stop_buf
    while True:
        try:
            chunk = os.read(_stop_fd, 4096) if _stop_fd >= 0 else b""
        except BlockingIOError:
            break
        if not chunk:
            break
        _stop_buf += chunk
    *ids, _stop_buf = _stop_buf.split(b"\n")
    _stops.update(i.decode() for i in ids if i)


def _stop(signum: int, frame: object) -> None:
    _read_stops()
    if not _running or _current not in _stops:
        return  # another task of the batch (skipped when its turn comes), or one that ended
    if signum == STOP_WALLTIME:
        raise errors.WalltimeExceeded(
            f"task ran past its walltime of {_walltime}s and was stopped")
    raise errors.TaskCancelled("task was cancelled while it ran")


def _leave_slot() -> bool:
    """``fedcompute.worker_slot.leave`` in a lane: the running task waits for tasks it
    submitted, so the lane starts a spare executor; this one retires after the task."""
    global _seceded
    if not _running or _frames is None:
        return False
    if not _seceded:
        _seceded = True
        _frames.send({"secede": True})
    return True


def _send_output(batch: dict) -> None:
    """Live output of the running task, to the lane (which sends it on to the agent)."""
    if _frames is not None:
        _frames.send({"output": batch})


def main() -> None:
    global _running, _current, _walltime, _frames, _seceded, _stop_fd
    # Our frames use private copies of the pipes; what the task prints goes to stderr.
    frames_in, frames_out = os.dup(0), os.dup(1)
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    from fedcompute import worker_slot

    from ..records import LeasedTask, TaskResult
    from ..runner import run_task
    from .frames import PipeFrames

    frames = _frames = PipeFrames(frames_in, frames_out)
    worker_slot.register(_leave_slot)
    signal.signal(STOP_WALLTIME, _stop)
    signal.signal(STOP_CANCEL, _stop)
    bodies: dict[str, bytes] = {}
    max_result_size = int(sys.argv[1]) if len(sys.argv) > 1 else 10 * 1024 * 1024
    if len(sys.argv) > 2:
        _stop_fd = int(sys.argv[2])
        os.set_blocking(_stop_fd, False)
    frames.send({"ready": os.getpid()})
    while (batch := frames.recv()) is not None:
        for wire, body in batch:
            task = LeasedTask(**wire)
            if body is not None:
                bodies[task.function_id] = body
            _current, _walltime, _running = task.task_id, task.walltime, True
            try:
                if task.task_id in _stops:  # stopped before its turn
                    raise errors.TaskCancelled("task was cancelled before it started")
                result = run_task(task, bodies[task.function_id], max_result_size,
                                  enforce_walltime=False, send_output=_send_output)
            except (errors.TaskCancelled, errors.WalltimeExceeded) as exc:
                # A stop landing just before or after the task's own code: the lane reports it
                result = TaskResult.failure(task.task_id, exc)
            finally:
                _running = False
            _stops.discard(task.task_id)
            frames.send(result.wire())
            if _seceded:
                return  # a spare took this slot: the lane retires this executor (and hands
                # the rest of the batch to another)
        time.sleep(0)


if __name__ == "__main__":
    main()
