"""The lane in a Dask worker: a TCP endpoint the agent sends short tasks to, and executor
processes that run them (as Parsl's interchange feeds its workers), without a Dask task each.

Dask still provisions, scales and replaces the workers: the lane is a worker plugin
(:class:`LanePlugin`), started in every worker the cluster brings up. The agent finds the lanes
with ``Client.run(lane_address)`` and connects; the first frame must carry the lane's secret
(the lane runs code it is sent, so nobody else may connect).

Frames from the agent: ``{"op": "hello", "secret"}``, ``{"op": "run", "tasks": [...],
"bodies": {function_id: body}}``, ``{"op": "stop", "task_ids": [...], "why": "cancel"}``.
``{"op": "steal", "n"}`` (give back up to n tasks not started). To the agent: one
``{"op": "batch"}`` frame for whatever happened meanwhile: ``results``, ``started``,
``seceded``, ``output`` (live output batches, ahead of their tasks' results) and, answering a
steal, ``returned`` (ids of the tasks given back).
"""

from __future__ import annotations

import hmac
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin
from fedcompute import errors, process

from ..records import LeasedTask, TaskResult
from .executor import STOP_CANCEL, STOP_WALLTIME
from .frames import PipeFrames, SocketFrames

log = logging.getLogger(__name__)

PLUGIN_NAME = "fedcompute-lane"
#: After the soft stop (an exception raised in the task), how long before SIGKILL.
GRACE = {"walltime": 5.0, "cancel": 1.0}


#: Most tasks an executor may take from the lane's queue at once, when its lane allows batches
#: (``LaneServer(batch=...)``; tasks with walltimes always go alone, under their timer). The
#: batch starts at one task and doubles while batches end within ``QUICK`` seconds, back to one
#: after a slower batch. Off (1) by default: a long task that follows quick ones still holds the
#: quick tasks sent with it, out of the agent's work stealing, until it ends (a 120 s task kept
#: a 0 s one waiting while the other lane sat idle). Safe batching needs those tasks taken back
#: from a batch whose head runs long.
BATCH = 8
QUICK = 0.005


class Executor:
    """One executor process and the thread that feeds it batches of tasks, run one at a time."""

    def __init__(self, lane: LaneServer, index: int):
        self.lane = lane
        self.index = index
        self.proc: subprocess.Popen | None = None
        self.frames: PipeFrames | None = None
        self.stop_fd = -1  # the write end of the process's stop pipe
        #: Its tasks in flight, the running one first (or the next to send).
        self.batch: list[LeasedTask] = []
        self.stops: dict[str, str] = {}  # task id -> why, for tasks of the batch asked to stop
        self.known: set[str] = set()
        self.sent = False  # the batch went to the process (a stop must signal it)
        self.size = 1  # of its next batch
        self.retiring = False  # its task gave its slot to a spare: ends after the task
        self._lock = threading.Lock()
        threading.Thread(target=self._run, daemon=True, name=f"fedcompute-lane-{index}").start()

    @property
    def task(self) -> LeasedTask | None:
        """The task running (or about to)."""
        batch = self.batch
        return batch[0] if batch else None

    def _spawn(self) -> None:
        # From this thread, which lives as long as the worker: the executor dies with it.
        if self.stop_fd >= 0:
            os.close(self.stop_fd)
        read_end, self.stop_fd = os.pipe()
        try:
            self.proc = process.spawn(
                [sys.executable, "-m", "fedcompute.endpoint.lane.executor",
                 str(self.lane.max_result_size), str(read_end)], death_signal=signal.SIGKILL,
                new_session=False, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                pass_fds=(read_end,))
        finally:
            os.close(read_end)
        self.frames = PipeFrames(self.proc.stdout.fileno(), self.proc.stdin.fileno())
        ready = self.frames.recv()
        if not ready:
            raise RuntimeError(f"lane executor exited with {self.proc.wait()}")
        self.known = set()

    def _run(self) -> None:
        # A batch's last result is reported once the next batch is on its way to the process
        # (or none is queued): between two batches the process waits for one pipe hop, not
        # also for the frame to the agent.
        unreported: TaskResult | None = None

        def report() -> None:
            nonlocal unreported
            if unreported is not None:
                self.lane.done(unreported)
                unreported = None

        try:  # at once, not at the first task: a cold endpoint's first map finds it ready
            self._spawn()
        except Exception as exc:  # noqa: BLE001 - tried again at the first task
            log.warning("lane executor %d could not start: %s", self.index, exc)
            self.proc = None
        while not self.lane.closed and not self.retiring:
            batch = self.lane.next_tasks(self.size, wait=unreported is None)
            if not batch:
                report()
                continue
            with self._lock:  # from now on a stop finds them here, even while we spawn
                self.batch, self.stops, self.sent = list(batch), {}, False
            result = None
            try:
                if self.proc is None or self.proc.poll() is not None:
                    self._spawn()
                result = self._run_batch(report)
            except Exception as exc:  # noqa: BLE001 - the executor could not be started
                log.warning("lane executor %d: %s", self.index, exc)
                with self._lock:
                    failed, self.batch = self.batch, []
                for task in failed[:-1]:
                    self.lane.done(TaskResult.failure(task.task_id, exc))
                result = TaskResult.failure(failed[-1].task_id, exc) if failed else None
                self.proc = None
            report()
            with self._lock:
                left, self.batch, stops = self.batch, [], self.stops
            # Not run (the process died or retired under an earlier task): queued again,
            # unless asked to stop meanwhile.
            for task in left:
                if task.task_id in stops:
                    self.lane.done(self._stopped_unstarted(task, stops[task.task_id]))
            self.lane.put_back([t for t in left if t.task_id not in stops])
            unreported = result
        report()
        if self.retiring:
            self.lane.retire(self)

    def _run_batch(self, sent: Callable[[], None]) -> TaskResult | None:
        """Send the batch and read its results: each one but the last is reported as it comes,
        the last is returned. Tasks the process did not get to stay in ``self.batch``."""
        with self._lock:
            stopped = [(t, self.stops[t.task_id]) for t in self.batch if t.task_id in self.stops]
            self.batch = [t for t in self.batch if t.task_id not in self.stops]
            self.sent = bool(self.batch)
            batch = list(self.batch)
        for task, reason in stopped:  # stopped before they went: they never start
            self.lane.done(self._stopped_unstarted(task, reason))
        if not batch:
            return None
        wires = []
        for task in batch:
            body = None if task.function_id in self.known else self.lane.bodies[task.function_id]
            self.known.add(task.function_id)
            wires.append([task.lane_wire(), body])
        began = time.monotonic()
        self.frames.send(wires)
        sent()
        result, unreported = None, []
        for task in batch:
            if result is not None:
                unreported.append(result)
            if unreported and not self.frames.ready():  # report before waiting, not each
                self.lane.done(*unreported)
                unreported = []
            self.lane.started(task)  # after the last result: a later frame takes it along
            result = self._result_of(task)
            with self._lock:
                self.batch.pop(0)
            if self.proc is None or self.retiring:
                break  # it died under the task, or retires after it: the rest stays queued
        if unreported:
            self.lane.done(*unreported)
        quick = time.monotonic() - began < QUICK
        self.size = min(self.lane.batch, self.size * 2) if quick else 1
        return result

    def _result_of(self, task: LeasedTask) -> TaskResult:
        """Wait for the result of ``task``, the one the process runs now."""
        timer = None
        if task.walltime:
            timer = threading.Timer(task.walltime, self.stop, (task.task_id, "walltime"))
            timer.daemon = True
            timer.start()
        try:
            reply = self.frames.recv()
            while isinstance(reply, dict) and "task_id" not in reply:  # not the result yet
                if reply.get("secede"):
                    self.lane.secede(self, task)
                elif "output" in reply:
                    self.lane.output(reply["output"])
                reply = self.frames.recv()
        finally:
            if timer is not None:
                timer.cancel()
            with self._lock:
                reason = self.stops.get(task.task_id)
        if reply is None:  # the executor died under the task
            code = self.proc.wait()
            self.proc = None
            return self._stopped(task, reason) or TaskResult.failure(
                task.task_id, errors.WorkerLost(
                    f"the worker process running this task died (exit code {code}: segfault, "
                    "os._exit, out of memory or killed)"))
        result = TaskResult.from_wire(reply)
        if reason == "cancel" and result.status == "failed":
            return TaskResult.cancelled(task.task_id, "while it ran")
        return result

    def _stopped_unstarted(self, task: LeasedTask, reason: str) -> TaskResult:
        """The result of a task asked to stop before the process started it."""
        return self._stopped(task, reason) or TaskResult.cancelled(task.task_id)

    @staticmethod
    def _stopped(task: LeasedTask, reason: str | None) -> TaskResult | None:
        """The result of a task the lane stopped for ``reason`` (None: it was not stopped)."""
        if reason == "cancel":
            return TaskResult.cancelled(task.task_id, "while it ran")
        if reason == "walltime":
            return TaskResult.failure(task.task_id, errors.WalltimeExceeded(
                f"task ran past its walltime of {task.walltime}s and was stopped"))
        return None

    def holds(self, task_id: str) -> bool:
        return any(t.task_id == task_id for t in self.batch)

    def stop(self, task_id: str, reason: str) -> bool:
        """Stop ``task_id`` if this executor holds it: not sent yet, it never starts; sent, the
        process learns which task (the stop pipe), then the signal; SIGKILL after grace if it
        still runs it."""
        with self._lock:
            if not self.holds(task_id):
                return False
            self.stops[task_id] = reason
            if not self.sent or self.proc is None:
                return True
            proc, stop_fd = self.proc, self.stop_fd
        try:
            os.write(stop_fd, task_id.encode() + b"\n")
            proc.send_signal(STOP_CANCEL if reason == "cancel" else STOP_WALLTIME)
        except OSError:  # it exited meanwhile: its thread reports the task
            return True
        killer = threading.Timer(GRACE[reason], self._kill_if_still, (task_id, proc))
        killer.daemon = True
        killer.start()
        return True

    def _kill_if_still(self, task_id: str, proc: subprocess.Popen) -> None:
        with self._lock:
            still = self.task is not None and self.task.task_id == task_id
        if still and proc.poll() is None:
            proc.kill()




#: A "started" waits this long for its task's result, to go in the same frame: a short task
#: then costs one frame to the agent, not two.
STARTED_DELAY = 0.02


class LaneServer:
    """The lane of one Dask worker process."""

    def __init__(self, host: str, secret: str, executors: int, max_result_size: int,
                 batch: int = 1):
        #: Most tasks an executor takes at once (see ``BATCH``).
        self.batch = max(1, batch)
        self.secret = secret
        self.max_result_size = max_result_size
        self.closed = False
        self.bodies: dict[str, bytes] = {}
        self._queue: deque[LeasedTask] = deque()
        self._ready = threading.Condition()
        self._outbox: queue.Queue[dict] = queue.Queue()
        self._conn: SocketFrames | None = None
        self._server = socket.create_server((host, 0))
        self.address = f"{host}:{self._server.getsockname()[1]}"
        self.host = socket.gethostname()
        self.executors = [Executor(self, i) for i in range(max(1, executors))]
        self._sending = threading.Lock()
        self._started_waiting = threading.Event()
        threading.Thread(target=self._accept, daemon=True, name="fedcompute-lane-accept").start()
        threading.Thread(target=self._send_started, daemon=True,
                         name="fedcompute-lane-started").start()

    # --- the agent's connection ------------------------------------------------------

    def _accept(self) -> None:
        while not self.closed:
            try:
                sock, _ = self._server.accept()
            except OSError:
                return
            if self.closed:
                sock.close()
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(SocketFrames(sock),), daemon=True,
                             name="fedcompute-lane-conn").start()

    def _serve(self, conn: SocketFrames) -> None:
        try:
            hello = conn.recv()
            if not (isinstance(hello, dict) and hmac.compare_digest(
                    str(hello.get("secret", "")), self.secret)):
                conn.close()
                return
            with self._ready:  # a new agent session: what the old one queued is dropped
                self._queue.clear()
                old, self._conn = self._conn, conn
            if old is not None:
                old.close()
            conn.send({"op": "welcome", "executors": len(self.executors), "host": self.host})
            while (message := conn.recv()) is not None:
                if message.get("op") == "run":
                    self.bodies.update(message.get("bodies") or {})
                    tasks = [LeasedTask(**t) for t in message["tasks"]]
                    with self._ready:
                        self._queue.extend(tasks)
                        self._ready.notify(len(tasks))
                elif message.get("op") == "stop":
                    self._stop(message["task_ids"], message.get("why", "cancel"))
                elif message.get("op") == "steal":
                    self._give_back(int(message.get("n") or 0))
        except (OSError, ValueError) as exc:
            log.info("lane connection ended: %s", exc)
        finally:
            with self._ready:
                if self._conn is conn:
                    self._conn = None
                    self._queue.clear()  # the agent reruns what it had here
            conn.close()

    def _give_back(self, n: int) -> None:
        """Hand up to ``n`` tasks not started yet back to the agent (the last queued: the
        agent runs them on a lane with an idle executor). Always answered, if with none."""
        with self._ready:
            back = [self._queue.pop() for _ in range(min(max(n, 0), len(self._queue)))]
        self._outbox.put({"op": "returned", "task_ids": [t.task_id for t in reversed(back)]})
        self._flush()

    def _stop(self, task_ids: list[str], why: str) -> None:
        wanted = set(task_ids)
        with self._ready:  # not started yet: never starts
            queued = [t for t in self._queue if t.task_id in wanted]
            for t in queued:
                self._queue.remove(t)
        for t in queued:
            self.done(TaskResult.cancelled(t.task_id))
        for executor in list(self.executors):
            for task_id in wanted:
                executor.stop(task_id, why)

    # --- executors -------------------------------------------------------------------

    def secede(self, executor: Executor, task: LeasedTask) -> None:
        """``executor``'s task waits for tasks it submitted: a spare executor takes its slot
        (as ``distributed.secede`` does for a Dask thread), and the agent may send one more."""
        executor.retiring = True
        with self._ready:
            self.executors.append(Executor(self, len(self.executors)))
        self._outbox.put({"op": "seceded", "task_id": task.task_id})
        self._flush()

    def retire(self, executor: Executor) -> None:
        with self._ready:
            if executor in self.executors:
                self.executors.remove(executor)
        if executor.proc is not None and executor.proc.poll() is None:
            executor.proc.wait()  # it exits on its own after the task

    def next_tasks(self, most: int, wait: bool = True) -> list[LeasedTask]:
        """The next batch for an executor: up to ``most`` tasks without walltimes (and at most
        its share of the queue, so that the others get theirs), or one with a walltime."""
        with self._ready:
            if not self._queue and wait:
                self._ready.wait(1.0)
            if not self._queue:
                return []
            if self._queue[0].walltime is not None:
                return [self._queue.popleft()]
            share = min(most, max(1, len(self._queue) // len(self.executors)))
            batch = []
            while self._queue and len(batch) < share and self._queue[0].walltime is None:
                batch.append(self._queue.popleft())
            return batch

    def put_back(self, tasks: list[LeasedTask]) -> None:
        """Tasks an executor took but did not run: first in the queue again."""
        if not tasks:
            return
        with self._ready:
            self._queue.extendleft(reversed(tasks))
            self._ready.notify(len(tasks))

    def started(self, task: LeasedTask) -> None:
        self._outbox.put({"op": "started", "task_ids": [task.task_id], "host": self.host,
                          "pid": os.getpid(), "at": time.time()})
        self._started_waiting.set()  # sent with the next frame, or by _send_started

    def _send_started(self) -> None:
        """Send "started" items no result took along within ``STARTED_DELAY``."""
        while not self.closed:
            if not self._started_waiting.wait(1.0):
                continue
            time.sleep(STARTED_DELAY)
            self._started_waiting.clear()
            self._flush()

    def output(self, batch: dict) -> None:
        """Live output of a running task: to the agent ahead of the task's result."""
        self._outbox.put({"op": "output", "batch": batch})
        self._flush()

    def done(self, *results: TaskResult) -> None:
        for result in results:
            self._outbox.put({"op": "result", "result": result.wire()})
        self._flush()

    def _flush(self) -> None:
        """Send what is in the outbox, from the calling thread, unless another thread is
        sending: then that one takes it along (one frame for whatever piled up meanwhile,
        no thread hop when the lane is quiet)."""
        while not self._outbox.empty() and self._sending.acquire(blocking=False):
            try:
                self._send_outbox()
            finally:
                self._sending.release()

    def _send_outbox(self) -> None:
        items = []
        while True:
            try:
                items.append(self._outbox.get_nowait())
            except queue.Empty:
                break
        if items:
            frame = {"op": "batch",
                     "results": [i["result"] for i in items if i["op"] == "result"],
                     "started": [[i["task_ids"][0], i["at"]] for i in items
                                 if i["op"] == "started"],
                     "seceded": [i["task_id"] for i in items if i["op"] == "seceded"],
                     "host": self.host, "pid": os.getpid()}
            output = [i["batch"] for i in items if i["op"] == "output"]
            if output:
                frame["output"] = output
            returned = [i["task_ids"] for i in items if i["op"] == "returned"]
            if returned:
                frame["returned"] = [t for ids in returned for t in ids]
            conn = self._conn
            if conn is None:
                return  # the agent is gone: it reruns these, or they were reclaimed
            try:
                conn.send(frame)
            except OSError:
                pass

    def close(self) -> None:
        self.closed = True
        # shutdown() wakes the thread blocked in accept(); close() alone would not, and the
        # next socket opened in this process could reuse the descriptor under it.
        try:
            self._server.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._server.close()
        with self._ready:
            self._ready.notify_all()
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        for executor in list(self.executors):
            if executor.proc is not None and executor.proc.poll() is None:
                executor.proc.kill()


class LanePlugin(WorkerPlugin):
    """A Dask worker plugin (``Client.register_plugin``): starts the worker's lane."""

    name = PLUGIN_NAME
    idempotent = True

    def __init__(self, secret: str, max_result_size: int, executors: int | None = None):
        self.secret = secret
        self.max_result_size = max_result_size
        self.executors = executors
        self.lane: LaneServer | None = None

    def setup(self, worker: Any) -> None:
        host = worker.address.split("://", 1)[-1].rsplit(":", 1)[0] or "127.0.0.1"
        self.lane = LaneServer(host, self.secret, self.executors or worker.state.nthreads,
                               self.max_result_size)

    def teardown(self, worker: Any) -> None:
        if self.lane is not None:
            self.lane.close()


def lane_address(dask_worker: Any) -> str | None:
    """``Client.run(lane_address)``: this worker's lane, if it has one."""
    plugin = dask_worker.plugins.get(PLUGIN_NAME)
    lane = getattr(plugin, "lane", None)
    return lane.address if lane is not None else None
