"""A lane's executor: a child process of a Dask worker that runs one task at a time.

Running each task in a process of its own lets the lane stop it at once and cleanly: a walltime
or a cancellation is a signal that raises ``WalltimeExceeded`` / ``TaskCancelled`` in the task
(even in ``time.sleep``), then SIGKILL after a grace period; a task that kills its process
(``os._exit``, a segfault) takes only itself down. The lane starts a fresh executor after.

``python -m fedcompute.endpoint.lane.executor``: frames on stdin/stdout, ``[task, body]`` in,
a result out. The task's own output never reaches the frames: fd 1 is moved away first.
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
_walltime: float | None = None  # of the task running now
_frames = None
_seceded = False


def _stop(signum: int, frame: object) -> None:
    if not _running:
        return
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
    global _running, _walltime, _frames, _seceded
    # Our frames use private copies of the pipes; what the task prints goes to stderr.
    frames_in, frames_out = os.dup(0), os.dup(1)
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    from fedcompute import worker_slot

    from ..records import LeasedTask
    from ..runner import run_task
    from .frames import PipeFrames

    frames = _frames = PipeFrames(frames_in, frames_out)
    worker_slot.register(_leave_slot)
    signal.signal(STOP_WALLTIME, _stop)
    signal.signal(STOP_CANCEL, _stop)
    bodies: dict[str, bytes] = {}
    max_result_size = int(sys.argv[1]) if len(sys.argv) > 1 else 10 * 1024 * 1024
    frames.send({"ready": os.getpid()})
    while (message := frames.recv()) is not None:
        wire, body = message
        task = LeasedTask(**wire)
        if body is not None:
            bodies[task.function_id] = body
        _running, _walltime = True, task.walltime
        try:
            result = run_task(task, bodies[task.function_id], max_result_size,
                              enforce_walltime=False, send_output=_send_output)
        finally:
            _running = False
        frames.send(result.wire())
        if _seceded:
            return  # a spare took this slot: the lane retires this executor
        time.sleep(0)


if __name__ == "__main__":
    main()
