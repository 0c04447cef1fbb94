"""The user process: ``python -P -m fedcompute.endpoint.multiuser.child``, run by the manager as
the mapped local account.

It builds its engine from the rendered template (the ``engine:`` of a user process config) and
runs the tasks the manager sends with the agent's own dispatcher (packing, resources, walltime,
worker deaths) and runner, over the frames of :mod:`.protocol` on its stdin and stdout. The
pipe is moved to private descriptors first, and fds 0-2 go to /dev/null and the process's log,
so that what tasks print never reaches the pipe. It ends on ``stop``, on SIGTERM, and when its
stdin closes (the manager died); its Dask workers end with it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from fedcompute import serialize

from ..agent.dispatcher import Dispatcher, FunctionCache
from ..agent.ledger import Ledger
from ..config import EndpointConfig
from ..engines import get_engine
from ..records import LeasedTask, TaskResult
from .protocol import FrameWriter, read_frames

log = logging.getLogger("fedcompute.endpoint.multiuser.child")

#: Task settings the manager passes on from its own config.
SETTINGS = ("max_result_size", "chunk_target_seconds", "max_chunk", "task_walltime")


class _Stop(Exception):
    """SIGTERM: leave the frame loop."""


def _take_pipe() -> tuple[Any, FrameWriter]:
    """The manager's pipe on descriptors of our own (not inherited by workers); stdin from
    /dev/null, stdout to stderr until the log is open."""
    frames_in = os.fdopen(os.dup(0), "rb", buffering=0)
    writer = FrameWriter(os.fdopen(os.dup(1), "wb", buffering=0))
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    return frames_in, writer


def _open_log(folder: Path) -> None:
    fd = os.open(folder / "process.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _workers_follower(engine: Any, ledger: Ledger, writer: FrameWriter, state: dict,
                      mark: Any, stopping: threading.Event) -> None:
    """Workers (told to the manager when they change), scaling, tasks that waited for nodes."""
    last = -1
    while not stopping.wait(0.5):
        try:
            state["workers"] = engine.worker_count()
            if state["workers"] != last:
                last = state["workers"]
                writer.write({"op": "workers", "workers": last})
            if state["workers"]:
                ready = ledger.take_waiting_for_nodes()
                if ready:
                    mark("running", ready)
            engine.scale_for(ledger.outstanding())
        except OSError:
            stopping.set()  # the manager is gone; stdin's end stops the main loop
        except Exception as exc:  # noqa: BLE001 - keep following whatever happens
            log.warning("status update failed: %s", exc)


def serve(frames: Any, writer: FrameWriter) -> int:
    """Run one user process over ``frames`` (an iterator) and ``writer``; returns the exit
    code."""
    start = next(frames, None)
    if start is None or start.get("op") != "start":
        return 2
    folder = Path(start["workdir"])
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        _open_log(folder)
        settings = {k: v for k, v in (start.get("settings") or {}).items() if k in SETTINGS}
        config = EndpointConfig.model_validate({**settings, **start["config"]})
        engine = get_engine(config.engine, folder, container=config.container)
        log.info("user process for %s (uid %d): engine %s", start.get("owner"), os.getuid(),
                 config.engine)
        engine.start()
    except BaseException as exc:  # noqa: BLE001 - told to the manager, then exit
        if isinstance(exc, PermissionError) and exc.filename:
            exc = PermissionError(f"{exc}: this user process (uid {os.getuid()}) cannot "
                                  "reach its work folder; every folder above it must be "
                                  "searchable by local users (chmod o+x), or set the "
                                  "endpoint's user_work_root")
        log.exception("user process did not start")
        writer.write({"op": "failed", "error": serialize.pack_exception(exc)})
        return 1

    stopping = threading.Event()
    ledger, functions = Ledger(), FunctionCache()
    state = {"workers": engine.worker_count()}

    def finish(results: list[TaskResult]) -> None:
        ids = [r.task_id for r in results]
        ledger.finished(ids)
        ledger.delivered(ids)
        try:
            writer.write({"op": "results", "results": [r.wire() for r in results]})
        except OSError:
            stopping.set()

    def mark(state_name: str, task_ids: list[str]) -> None:
        try:
            writer.write({"op": "mark", "state": state_name, "task_ids": task_ids})
        except OSError:
            stopping.set()

    def output(batches: list[dict]) -> None:
        try:
            writer.write({"op": "output", "batches": batches})
        except OSError:
            stopping.set()

    dispatcher = Dispatcher(engine, config, ledger, functions, finish, mark,
                            lambda: state["workers"], stopping)
    # Tasks report when they start and what they print while they run, as on other endpoints.
    dispatcher.on_started = lambda task_ids, host, pid: mark("running", task_ids)
    dispatcher.on_output = output
    dispatcher.follow_dask_starts()
    follower = threading.Thread(target=_workers_follower, name="fedcompute-user-status",
                                args=(engine, ledger, writer, state, mark, stopping),
                                daemon=True)
    follower.start()
    writer.write({"op": "ready", "workers": state["workers"], "pid": os.getpid()})
    try:
        for frame in frames:
            op = frame["op"]
            if op == "tasks":
                functions.add(frame.get("functions") or {})
                dispatcher.dispatch([LeasedTask(**t) for t in frame.get("tasks") or []])
            elif op == "cancel":
                dispatcher.cancel_all()
            elif op == "stop":
                break
    except _Stop:
        pass
    stopping.set()
    dispatcher.cancel_all()
    engine.close()
    follower.join(timeout=5)
    log.info("user process stopped")
    return 0


def main() -> int:
    frames_in, writer = _take_pipe()
    os.umask(0o077)  # what tasks write is their user's alone unless they say otherwise

    def on_term(*_: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: let the shutdown finish
        raise _Stop

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the manager stops us itself
    return serve(read_frames(frames_in), writer)


if __name__ == "__main__":
    sys.exit(main())
