"""From leased tasks to work on the engine's workers: checks, routing, and what a failure
means.

* The fast lane (``lanes.py``): tasks that need no worker resources and no launcher go to
  executor processes on the workers, one frame for many tasks, no Dask task each.
* The Dask path, for the others (and for all when the lane is off or no worker has one yet):
  short tasks of one function are packed into one Dask task (about ``chunk_target_seconds`` of
  work, measured per function); tasks with resources, a walltime or a launcher run alone. When
  a Dask task fails because its worker died, a packed chunk is rerun task by task, so that
  only the task that kills its worker fails.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from typing import Any

from fedcompute import errors

from ..config import EndpointConfig
from ..engines.base import Engine
from ..engines.resources import FAST_LANE_KEY, dask_resources
from ..lane.server import LanePlugin
from ..launchers import needs_launch
from ..records import LeasedTask, TaskResult
from ..runner import OUTPUT_TOPIC, STARTED_TOPIC, run_chunk, stop_tasks
from .lanes import LanePool
from .ledger import Ledger

log = logging.getLogger(__name__)

#: Exceptions by which Dask says a task's worker died under it.
_WORKER_DEATHS = ("KilledWorker", "CommClosedError", "FutureCancelledError")


class FunctionCache:
    """Function bodies the service sent, most recent last (shared by the poller, which adds,
    and the dispatcher, which reads)."""

    def __init__(self, size: int = 1024):
        self.size = size
        self._bodies: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, bodies: dict[str, bytes]) -> None:
        with self._lock:
            self._bodies.update(bodies)
            while len(self._bodies) > self.size:
                self._bodies.popitem(last=False)

    def get(self, function_id: str) -> bytes | None:
        with self._lock:
            return self._bodies.get(function_id)

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._bodies)


class Dispatcher:
    """Submits leased tasks to the engine's Dask cluster; results go to ``finish``."""

    def __init__(self, engine: Engine, config: EndpointConfig, ledger: Ledger,
                 functions: FunctionCache, finish: Callable[[list[TaskResult]], None],
                 mark: Callable[[str, list[str]], None], workers: Callable[[], int],
                 stopping: threading.Event):
        self.engine = engine
        self.config = config
        self.ledger = ledger
        self.functions = functions
        self.finish = finish
        self.mark = mark
        self.workers = workers
        self.stopping = stopping
        self.allowed = (set(config.allowed_functions) if config.allowed_functions is not None
                        else None)
        #: Resources this endpoint's workers advertise: a task's amount of one must be a number.
        self.resource_names = set(config.engine.get("worker_resources")
                                  or config.engine.get("resources") or ())
        self._lock = threading.Lock()  # guards the two below (Dask callback threads write)
        self._futures: dict[str, Any] = {}
        self._chunk_of: dict[str, str] = {}     # task id -> key of its Dask task
        self._stopping: set[str] = set()        # tasks asked to stop (cancelled)
        self._durations: dict[str, float] = {}  # function id -> seconds per task (EWMA)
        #: Called with (task ids, host, pid) when tasks start on a worker.
        self.on_started: Callable[[list[str], str, int], None] = lambda ids, host, pid: None
        #: Called with live output batches of running tasks (``stream_output``).
        self.on_output: Callable[[list[dict]], None] = lambda batches: None
        self.lanes: LanePool | None = None

    def start_lanes(self) -> None:
        """Put a lane on every worker the engine has or will have (a Dask worker plugin)."""
        if not self.config.fast_lane or self.engine.client is None:
            return
        secret = secrets.token_urlsafe(32)
        self.engine.client.register_plugin(LanePlugin(secret, self.config.max_result_size))
        self.lanes = LanePool(self.engine.client, secret, self.functions.get, self.finish,
                              self._started, self._lost_in_lane)
        self.lanes.output = lambda batches: self.on_output(batches)
        self.lanes.refresh()

    def _started(self, task_ids: list[str], host: str, pid: int) -> None:
        self.on_started(task_ids, host, pid)

    def follow_dask_starts(self) -> None:
        """Dask-path tasks tell when they start, and their live output, through Dask event
        topics."""
        if self.engine.client is None:
            return

        def started(event: Any) -> None:
            _, msg = event
            self.on_started([msg["task_id"]], msg.get("host", ""), int(msg.get("pid") or 0))

        self.engine.client.subscribe_topic(STARTED_TOPIC, started)
        def output(event: Any) -> None:
            _, msg = event  # (Dask adds the worker's address)
            self.on_output([{k: msg.get(k) for k in ("task_id", "seq", "items")}])

        self.engine.client.subscribe_topic(OUTPUT_TOPIC, output)

    def stop(self, task_ids: list[str]) -> None:
        """Stop these tasks (cancelled while held here): each ends with a ``cancelled``
        result, from wherever it is (a lane, a Dask worker, not started yet)."""
        wanted = set(task_ids)
        if self.lanes is not None:
            held, unsent = self.lanes.stop(list(wanted))
            wanted -= set(held)
            self.finish([TaskResult.cancelled(t.task_id) for t in unsent])
            wanted -= {t.task_id for t in unsent}
        running = []
        with self._lock:
            for task_id in wanted:
                key = self._chunk_of.get(task_id)
                future = self._futures.get(key) if key else None
                if future is None:
                    continue
                self._stopping.add(task_id)
                running.append(task_id)
        if running:
            try:  # a task not started yet never will; a running one is stopped
                self.engine.client.run(stop_tasks, running)
            except Exception as exc:  # noqa: BLE001 - workers come and go
                log.warning("could not stop %d tasks: %s", len(running), exc)

    def _lost_in_lane(self, tasks: list[LeasedTask]) -> None:
        for task in tasks:  # the Dask path tells the task that killed its worker from the rest
            self._submit([task])

    def dispatch(self, leased: list[LeasedTask]) -> list[LeasedTask]:
        """Submit what was leased; returns the tasks dispatched (not already held)."""
        new = self.ledger.admit(t.task_id for t in leased)
        tasks = [t for t in leased if t.task_id in new]
        packable: dict[str, list[LeasedTask]] = {}
        alone: list[LeasedTask] = []
        laned: list[LeasedTask] = []
        use_lanes = self.lanes is not None and self.lanes.available()
        for task in tasks:
            refusal = self._refusal(task)
            if refusal is not None:
                self.finish([TaskResult.failure(task.task_id, refusal)])
            elif use_lanes and task.lane and task.resources is None and not task.launch:
                laned.append(task)
            elif task.packable:
                packable.setdefault(task.function_id, []).append(task)
            else:
                alone.append(task)
        if laned:
            self.lanes.submit(laned)
        for function_id, group in packable.items():
            size = self._chunk_size(function_id, len(group))
            for i in range(0, len(group), size):
                self._submit(group[i:i + size])
        for task in alone:
            self._submit([task])
        if tasks and self.workers() == 0:
            ids = [t.task_id for t in tasks]
            self.ledger.waiting_for_nodes(ids)
            self.mark("waiting-for-nodes", ids)
        return tasks

    def _refusal(self, task: LeasedTask) -> BaseException | None:
        """Why this endpoint cannot run ``task`` (None if it can); sets its resources and
        walltime."""
        if self.allowed is not None and task.function_id not in self.allowed:
            return errors.FunctionNotAllowed(
                f"function {task.function_id} is not in this endpoint's allowed_functions")
        if self.functions.get(task.function_id) is None:
            return errors.SerializationError(
                f"function {task.function_id} body was not delivered to the endpoint")
        task.walltime = self.config.task_walltime
        if task.resource_specification:
            try:
                spec = dask_resources(task.resource_specification,
                                      resource_names=self.resource_names)
            except ValueError as exc:
                return exc
            task.resources = spec["resources"]
            task.walltime = spec["walltime"] or task.walltime
            task.launch = needs_launch(task.resource_specification)
            task.lane = (spec["options"] or {}).get(FAST_LANE_KEY) is not False
        return None

    def _chunk_size(self, function_id: str, count: int) -> int:
        with self._lock:
            per_task = self._durations.get(function_id, 0.001)
        # Batch engines starting from zero jobs will have up to max_jobs jobs' workers.
        slots = max(self.workers(), getattr(self.engine, "max_jobs", 1) or 1, 1)
        return int(min(self.config.max_chunk,
                       max(1, self.config.chunk_target_seconds / max(per_task, 1e-6)),
                       max(1, math.ceil(count / slots))))

    def _submit(self, chunk: list[LeasedTask], retried: bool = False) -> None:
        bodies = {t.function_id: self.functions.get(t.function_id) for t in chunk}
        key = f"fedcompute-{chunk[0].task_id}-{len(chunk)}-{uuid.uuid4().hex[:6]}"
        future = self.engine.client.submit(
            run_chunk, chunk, bodies, self.config.max_result_size, key=key, pure=False,
            resources=chunk[0].resources if len(chunk) == 1 else None, retries=0)
        with self._lock:
            self._futures[key] = future
            for t in chunk:
                self._chunk_of[t.task_id] = key
        future.add_done_callback(partial(self._chunk_done, chunk, key, retried))

    def _chunk_done(self, chunk: list[LeasedTask], key: str, retried: bool,
                    future: Any) -> None:
        with self._lock:
            self._futures.pop(key, None)
            for t in chunk:
                if self._chunk_of.get(t.task_id) == key:
                    del self._chunk_of[t.task_id]
            stopped = [t for t in chunk if t.task_id in self._stopping]
            self._stopping.difference_update(t.task_id for t in stopped)
        if self.stopping.is_set() and future.status != "finished":
            return  # shutting down: these tasks are released to the service
        if stopped and future.status != "finished":
            # Stopped by a cancellation (its worker ended): the others it held run again.
            self.finish([TaskResult.cancelled(t.task_id) for t in stopped])
            rest = [t for t in chunk if t not in stopped]
            for task in rest:
                self._submit([task])
            return
        if future.status == "cancelled":
            return
        try:
            results: list[TaskResult] = future.result()
        except Exception as exc:  # noqa: BLE001 - a worker died or the chunk could not run
            if len(chunk) > 1:
                # Rerun one by one so that only the task that kills its worker fails.
                for task in chunk:
                    self._submit([task])
                return
            if not retried and self._lost_with_worker(chunk[0], exc):
                # Dask fails every task its dead worker held (allowed-failures is 0), queued
                # ones too: a task merely waiting behind the one that killed the worker would
                # fail with it. One more run tells the culprit from the bystanders.
                self._submit(chunk, retried=True)
                return
            results = [self._death(chunk[0], exc)]
        self._learn_durations(chunk, results)
        self.finish(results)

    def _learn_durations(self, chunk: list[LeasedTask], results: list[TaskResult]) -> None:
        function_of = {t.task_id: t.function_id for t in chunk}
        with self._lock:
            for r in results:
                took = r.duration
                if took is not None:
                    fid = function_of[r.task_id]
                    self._durations[fid] = 0.8 * self._durations.get(fid, took) + 0.2 * took

    def _past_walltime(self, task: LeasedTask) -> bool:
        return bool(task.walltime) and (
            time.time() - self.ledger.dispatched_at(task.task_id) >= task.walltime)

    def _lost_with_worker(self, task: LeasedTask, exc: BaseException) -> bool:
        return type(exc).__name__ in _WORKER_DEATHS and not self._past_walltime(task)

    def _death(self, task: LeasedTask, exc: BaseException) -> TaskResult:
        if self._past_walltime(task):
            err: BaseException = errors.WalltimeExceeded(
                f"task ran past its walltime of {task.walltime}s and its worker was stopped")
        elif self._lost_with_worker(task, exc):
            err = errors.WorkerLost(
                "the worker process running this task died (segfault, os._exit, out of memory "
                f"or killed): {type(exc).__name__}: {exc}")
        else:
            err = exc
        return TaskResult.failure(task.task_id, err)

    def close(self) -> None:
        if self.lanes is not None:
            self.lanes.close()

    def fail_waiting(self, exc: BaseException) -> int:
        """Fail the Dask-path tasks held here that no worker has started (none can: the batch
        system keeps refusing jobs); returns how many."""
        with self._lock:
            chunks: dict[str, list[str]] = {}
            for task_id, key in self._chunk_of.items():
                chunks.setdefault(key, []).append(task_id)
            futures = [(key, self._futures[key]) for key in chunks if key in self._futures]
        failed: list[str] = []
        for key, future in futures:
            if future.status == "pending":
                future.cancel()
                failed += chunks[key]
        if failed:
            self.finish([TaskResult.failure(t, exc) for t in failed])
        return len(failed)

    def cancel_all(self) -> None:
        """Cancel every Dask task still running (shutting down)."""
        with self._lock:
            futures = list(self._futures.values())
        for future in futures:
            future.cancel()
