"""The endpoint agent: leases task batches from the service, runs them on a Dask engine and
sends results back in batches. It only ever makes outbound connections.

Threads: the main thread long-polls for leases and submits packed chunks to Dask; Dask's
callback threads collect chunk results; one sender thread batches results to the service
(spooling them to disk while it is unreachable); one heartbeat thread reports status and
scales the engine.
"""

from __future__ import annotations

import logging
import math
import platform
import queue
import threading
import time
import uuid
from collections import OrderedDict
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from fedcompute import __version__, errors, serialize
from fedcompute.protocol import API_VERSION, MSGPACK, packb, unpackb

from .config import EndpointConfig
from .engines import get_engine
from .engines.resources import dask_resources
from .runner import run_chunk
from .spool import Spool

log = logging.getLogger(__name__)


class ServiceUnavailable(Exception):
    """The service could not be reached or answered 5xx; try again later."""


class SessionReplaced(Exception):
    """Another agent for this endpoint connected; this one must stop."""


def _failure(task_id: str, exc: BaseException) -> dict:
    return {"task_id": task_id, "status": "failed", "exception": serialize.pack_exception(exc),
            "timings": {"finished": time.time()}}


class Agent:
    """One running endpoint."""

    def __init__(self, config: EndpointConfig, endpoint_id: str, credential: str,
                 service_url: str, workdir: Path):
        self.config = config
        self.endpoint_id = endpoint_id
        self.credential = credential
        self.service_url = service_url.rstrip("/")
        self.workdir = Path(workdir)
        self.session = uuid.uuid4().hex
        self.http = httpx.Client(
            base_url=f"{self.service_url}/{API_VERSION}/agent",
            headers={"Authorization": f"Bearer {credential}", "Accept": MSGPACK,
                     "Content-Type": MSGPACK},
            timeout=httpx.Timeout(60.0, connect=10.0), verify=config.verify_tls)
        self.engine = get_engine(config.engine, self.workdir)
        self.spool = Spool(self.workdir / "spool")
        self.functions: OrderedDict[str, bytes] = OrderedDict()
        self.allowed: set[str] | None = (set(config.allowed_functions)
                                         if config.allowed_functions is not None else None)
        self.outstanding: dict[str, float] = {}
        #: Finished here, result not yet stored by the service (queued, in flight or spooled).
        self.delivering: set[str] = set()
        self.waiting_for_nodes: set[str] = set()
        self.durations: dict[str, float] = {}
        self.results: queue.Queue[dict] = queue.Queue()
        self.lock = threading.Condition()
        self.stopping = threading.Event()
        self.heartbeat_interval = 5.0
        self.engine_status: dict[str, Any] = {}
        self.workers = 0
        self.bridge: Any = None
        self.futures: dict[str, Any] = {}
        self._threads: list[threading.Thread] = []
        #: Set by ``stop()`` to end the wait for a long-poll in flight (see _lease_request).
        self._poll_done: threading.Event | None = None
        self.started = time.time()

    # --- HTTP ----------------------------------------------------------------------------

    def post(self, path: str, body: dict, timeout: float = 60.0) -> Any:
        try:
            response = self.http.post(path, content=packb(body), timeout=timeout)
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(f"{path}: {exc}") from exc
        if response.status_code >= 500 or response.status_code in (429, 408):
            raise ServiceUnavailable(f"{path}: HTTP {response.status_code}")
        data = unpackb(response.content) if response.content else {}
        if response.status_code == 409:
            raise SessionReplaced(data.get("message", "session replaced"))
        if response.status_code >= 400:
            raise errors.ServiceError(response.status_code, data.get("message", str(data)))
        return data

    # --- lifecycle -----------------------------------------------------------------------

    def status(self, fresh: bool = True) -> dict[str, Any]:
        """The status heartbeats carry; ``fresh=False`` uses the engine status last gathered by
        the status thread, so a busy Dask scheduler never delays a heartbeat."""
        if fresh or not self.engine_status:
            self.engine_status = self.engine.status()
        with self.lock:
            outstanding = len(self.outstanding)
        return {**self.engine_status, "workers": self.workers, "outstanding": outstanding,
                "spooled_batches": len(self.spool), "session": self.session,
                "uptime": round(time.time() - self.started, 1),
                "versions": self.versions()}

    @staticmethod
    def versions() -> dict[str, str]:
        import cloudpickle
        import dask
        import distributed

        return {"fedcompute": __version__, "python": platform.python_version(),
                "dask": dask.__version__, "distributed": distributed.__version__,
                "cloudpickle": cloudpickle.__version__}

    def connect(self) -> None:
        delay = 0.5
        while not self.stopping.is_set():
            try:
                reply = self.post("/connect", {"session": self.session, "status": self.status(),
                                               "versions": self.versions()})
            except ServiceUnavailable as exc:
                log.warning("cannot reach the service (%s); retrying in %.1fs", exc, delay)
                self.stopping.wait(delay)
                delay = min(delay * 2, 15.0)
                continue
            self.heartbeat_interval = float(reply.get("heartbeat_interval", 5.0))
            log.info("connected as endpoint %s (session %s); %d earlier leases reclaimed",
                     self.endpoint_id, self.session, reply.get("reclaimed", 0))
            return

    def start(self) -> None:
        self.engine.start()
        self.workers = self.engine.worker_count()
        self.connect()
        for target, name in ((self._send_loop, "sender"), (self._status_loop, "status"),
                             (self._heartbeat_loop, "heartbeat")):
            thread = threading.Thread(target=target, name=f"fedcompute-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self._start_bridge()

    def _start_bridge(self) -> None:
        # A Dask client can run any code, so restricted endpoints keep Dask access off.
        if self.config.allowed_functions is not None or not self.config.dask_access:
            log.info("Dask access off (allowed_functions is set, or dask_access: false)")
            return
        try:
            from .dask_bridge import DaskBridge
        except ImportError:
            return
        try:
            self.bridge = DaskBridge(self.service_url, self.credential, self.endpoint_id,
                                     self.engine, max_workers=self.config.dask_max_workers,
                                     verify=self.config.verify_tls)
            self.bridge.start()
        except Exception as exc:  # noqa: BLE001 - the task path must not depend on it
            log.warning("Dask relay bridge not started: %s", exc)
            self.bridge = None

    def run(self) -> None:
        """Start, serve until ``stop()``, then drain and shut down."""
        self.start()
        try:
            self._lease_loop()
        finally:
            self.shutdown()

    def stop(self) -> None:
        self.stopping.set()
        if self._poll_done is not None:
            self._poll_done.set()
        with self.lock:
            self.lock.notify_all()

    # --- leasing and dispatch ------------------------------------------------------------

    def _lease_loop(self) -> None:
        delay = 0.5
        # When a lease reply is lost (service restarting, request timed out), the tasks it
        # carried stay leased to this session: ask for them back ("recover") at the next lease,
        # and once more when any request of ours still blocked in the service has surely ended.
        recover_at: list[float] = []
        while not self.stopping.is_set():
            with self.lock:
                room = self.config.max_outstanding - len(self.outstanding)
                if room <= 0:
                    self.lock.wait(0.5)
                    continue
            recover = bool(recover_at) and time.monotonic() >= recover_at[0]
            try:
                lease = self._lease_request({
                    "session": self.session, "max_tasks": min(room, self.config.max_tasks_per_lease),
                    "wait": 0 if self.stopping.is_set() or recover else self.config.lease_wait,
                    "cached_functions": list(self.functions)[-1024:], "recover": recover,
                })
                if lease is None:
                    return
                delay = 0.5
            except ServiceUnavailable as exc:
                log.warning("lease failed (%s); retrying in %.1fs", exc, delay)
                now = time.monotonic()
                recover_at = [now, now + self.config.lease_wait + 40]
                self.stopping.wait(delay)
                delay = min(delay * 2, 15.0)
                continue
            except SessionReplaced:
                log.error("another agent took over this endpoint; stopping")
                self.stop()
                return
            for fid, body in lease.get("functions", {}).items():
                self.functions[fid] = body
                while len(self.functions) > 1024:
                    self.functions.popitem(last=False)
            if recover:
                recover_at.pop(0)
            tasks = self.dispatch(lease["tasks"]) if lease["tasks"] else []
            if recover and tasks:
                log.warning("recovered %d leased tasks whose lease reply was lost", len(tasks))

    def _lease_request(self, body: dict) -> dict | None:
        """POST /lease; a long-poll runs on a daemon thread so that ``stop()`` need not wait
        up to ``lease_wait`` for it (None then). What an abandoned poll receives goes back to
        the queue: ``shutdown`` ends the session in the service (``disconnect``)."""
        timeout = self.config.lease_wait + 30
        if not body["wait"]:
            return self.post("/lease", body, timeout=timeout)
        done = threading.Event()
        outcome: list = []

        def poll() -> None:
            try:
                outcome.append((True, self.post("/lease", body, timeout=timeout)))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the lease loop
                outcome.append((False, exc))
            done.set()

        self._poll_done = done
        threading.Thread(target=poll, daemon=True, name="fedcompute-lease").start()
        if self.stopping.is_set():
            done.set()
        done.wait()
        self._poll_done = None
        if not outcome:
            return None
        ok, value = outcome[0]
        if not ok:
            raise value
        return value

    def _walltime(self, task: dict) -> float | None:
        return task.get("_walltime") or self.config.task_walltime

    def dispatch(self, tasks: list[dict]) -> list[dict]:
        """Pack tasks into Dask tasks and submit them; returns those it dispatched."""
        now = time.time()
        packable: dict[str, list[dict]] = {}
        single: list[dict] = []
        with self.lock:
            # A task may come back while this agent still runs it or delivers its result: a
            # recovered lease, or leases reclaimed while this agent looked silent. Its result
            # will be stored whichever lease it came with: do not run it twice.
            tasks = [t for t in tasks if t["task_id"] not in self.outstanding
                     and t["task_id"] not in self.delivering]
            for task in tasks:
                self.outstanding[task["task_id"]] = now
        for task in tasks:
            fid = task["function_id"]
            if self.allowed is not None and fid not in self.allowed:
                self._finish([_failure(task["task_id"], errors.FunctionNotAllowed(
                    f"function {fid} is not in this endpoint's allowed_functions"))])
            elif fid not in self.functions:
                self._finish([_failure(task["task_id"], errors.SerializationError(
                    f"function {fid} body was not delivered to the endpoint"))])
            elif task.get("resource_specification") or self._walltime(task):
                try:
                    # Dask worker resources (e.g. GPU) and a walltime, checked here
                    spec = dask_resources(task.get("resource_specification"))
                except ValueError as exc:
                    self._finish([_failure(task["task_id"], exc)])
                    continue
                task["_resources"], task["_walltime"] = spec["resources"], spec["walltime"]
                single.append(task)
            else:
                packable.setdefault(fid, []).append(task)
        # Batch engines starting from zero jobs will have up to max_jobs jobs' workers.
        slots = max(self.workers, getattr(self.engine, "max_jobs", 1) or 1, 1)
        for fid, group in packable.items():
            per_task = self.durations.get(fid, 0.001)
            size = int(min(self.config.max_chunk,
                           max(1, self.config.chunk_target_seconds / max(per_task, 1e-6)),
                           max(1, math.ceil(len(group) / slots))))
            for i in range(0, len(group), size):
                self._submit(group[i:i + size])
        for task in single:
            self._submit([task])
        if self.workers == 0 and tasks:
            self._mark("waiting-for-nodes", [t["task_id"] for t in tasks])
        return tasks

    def _submit(self, chunk: list[dict], retried: bool = False) -> None:
        task = chunk[0]
        walltime = self._walltime(task) if len(chunk) == 1 else None
        resources = task.get("_resources") if len(chunk) == 1 else None
        bodies = {t["function_id"]: self.functions[t["function_id"]] for t in chunk}
        key = f"fedcompute-{chunk[0]['task_id']}-{len(chunk)}-{uuid.uuid4().hex[:6]}"
        client = self.engine.client
        future = client.submit(run_chunk, chunk, bodies, self.config.max_result_size, walltime,
                               key=key, pure=False, resources=resources, retries=0)
        self.futures[key] = future
        future.add_done_callback(partial(self._chunk_done, chunk, walltime, key, retried))

    def _chunk_done(self, chunk: list[dict], walltime: float | None, key: str,
                    retried: bool, future: Any) -> None:
        self.futures.pop(key, None)
        if future.status == "cancelled" or self.stopping.is_set() and future.status != "finished":
            return  # shutting down: these tasks are released to the service
        try:
            results = future.result()
        except Exception as exc:  # noqa: BLE001 - a worker died or the chunk could not run
            if len(chunk) > 1:
                # Rerun one by one so that only the task that kills its worker fails.
                for task in chunk:
                    self._submit([task])
                return
            if not retried and self._lost_with_worker(chunk[0], walltime, exc):
                # Dask fails every task its dead worker held (allowed-failures is 0), queued
                # ones too: a task merely waiting behind the one that killed the worker would
                # fail with it. One more run tells the culprit from the bystanders.
                self._submit(chunk, retried=True)
                return
            results = [self._death(chunk[0], walltime, exc)]
        for r in results:
            t = r.get("timings") or {}
            if "started" in t:
                fid = next(c["function_id"] for c in chunk if c["task_id"] == r["task_id"])
                took = t["finished"] - t["started"]
                self.durations[fid] = 0.8 * self.durations.get(fid, took) + 0.2 * took
        self._finish(results)

    def _past_walltime(self, task: dict, walltime: float | None) -> bool:
        started = self.outstanding.get(task["task_id"], time.time())
        return bool(walltime) and time.time() - started >= walltime

    def _lost_with_worker(self, task: dict, walltime: float | None,
                          exc: BaseException) -> bool:
        return (type(exc).__name__ in ("KilledWorker", "CommClosedError", "FutureCancelledError")
                and not self._past_walltime(task, walltime))

    def _death(self, task: dict, walltime: float | None, exc: BaseException) -> dict:
        if self._past_walltime(task, walltime):
            err: BaseException = errors.WalltimeExceeded(
                f"task ran past its walltime of {walltime}s and its worker was stopped")
        elif self._lost_with_worker(task, walltime, exc):
            err = errors.WorkerLost(
                "the worker process running this task died (segfault, os._exit, out of memory "
                f"or killed): {type(exc).__name__}: {exc}")
        else:
            err = exc
        return _failure(task["task_id"], err)

    def _finish(self, results: list[dict]) -> None:
        with self.lock:
            for r in results:
                self.outstanding.pop(r["task_id"], None)
                self.waiting_for_nodes.discard(r["task_id"])
                self.delivering.add(r["task_id"])
            self.lock.notify_all()
        for r in results:
            self.results.put(r)

    def _mark(self, state: str, task_ids: list[str]) -> None:
        if state == "waiting-for-nodes":
            with self.lock:
                self.waiting_for_nodes.update(task_ids)
        try:
            self.post("/tasks/state", {"session": self.session, "state": state,
                                       "task_ids": task_ids})
        except (ServiceUnavailable, errors.ServiceError, SessionReplaced) as exc:
            log.warning("could not report %s: %s", state, exc)

    # --- results -------------------------------------------------------------------------

    def _drain(self, first_wait: float) -> list[dict]:
        batch: list[dict] = []
        try:
            batch.append(self.results.get(timeout=first_wait))
        except queue.Empty:
            return batch
        # Linger a little for company only while more results are on their way.
        with self.lock:
            linger = 0.002 if self.outstanding else 0.0
        deadline = time.monotonic() + linger
        while len(batch) < self.config.result_batch:
            try:
                batch.append(self.results.get_nowait())
            except queue.Empty:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.0005)
        return batch

    def _send_results(self, batch: list[dict]) -> None:
        try:
            self.post("/results", {"session": self.session, "results": batch})
        except errors.ServiceError as exc:
            if exc.status == 413 and len(batch) > 1:
                half = len(batch) // 2
                self._send_results(batch[:half])
                self._send_results(batch[half:])
            elif exc.status == 413:
                self._send_results([_failure(batch[0]["task_id"], errors.ResultTooLarge(
                    f"the service refused the result: {exc.message}"))])
            else:
                raise

    def _send_loop(self) -> None:
        backoff = 0.0
        while True:
            done = self.stopping.is_set() and self.results.empty() and not self.outstanding
            if backoff:
                self.stopping.wait(backoff) if not done else None
            if self.spool.files() and not self._flush_spool():
                backoff = min(max(backoff * 2, 0.5), 10.0)
                batch = self._drain(0)
                if batch:
                    self.spool.put(batch)
                if done:
                    return
                continue
            backoff = 0.0
            batch = self._drain(0.2)
            if not batch:
                if done:
                    return
                continue
            try:
                self._send_results(batch)
                self._delivered(batch)
            except (ServiceUnavailable, errors.ServiceError, SessionReplaced) as exc:
                log.warning("could not send %d results (%s); spooled to disk", len(batch), exc)
                self.spool.put(batch)
                backoff = 0.5

    def _delivered(self, batch: list[dict]) -> None:
        with self.lock:
            self.delivering.difference_update(r["task_id"] for r in batch)

    def _flush_spool(self) -> bool:
        for path in self.spool.files():
            try:
                batch = self.spool.read(path)
                self._send_results(batch)
                self._delivered(batch)
            except (ServiceUnavailable, errors.ServiceError, SessionReplaced):
                return False
            path.unlink()
            log.info("delivered spooled results %s", path.name)
        return True

    # --- heartbeat, scaling --------------------------------------------------------------

    def _status_loop(self) -> None:
        """Follow the engine (workers, scaling, tasks waiting for nodes); may block on Dask."""
        last = 0.0
        while not self.stopping.wait(0.5):
            try:
                self.workers = self.engine.worker_count()
                if time.monotonic() - last >= self.heartbeat_interval:
                    last = time.monotonic()
                    self.engine_status = self.engine.status()
                with self.lock:
                    outstanding = len(self.outstanding)
                    ready = self.workers and list(self.waiting_for_nodes)
                    if ready:
                        self.waiting_for_nodes.clear()
                if ready:
                    self._mark("running", ready)
                self.engine.scale_for(outstanding)
            except Exception as exc:  # noqa: BLE001 - keep following whatever happens
                log.warning("status update failed: %s", exc)

    def _heartbeat_loop(self) -> None:
        """Tell the service this agent is alive; never waits for Dask (a heartbeat stuck
        behind a busy scheduler would get the endpoint's leases reclaimed)."""
        while not self.stopping.wait(self.heartbeat_interval):
            try:
                self.post("/heartbeat", {"session": self.session,
                                         "status": self.status(fresh=False)})
            except SessionReplaced:
                log.error("another agent took over this endpoint; stopping")
                self.stop()
            except (ServiceUnavailable, errors.ServiceError) as exc:
                log.warning("heartbeat failed: %s", exc)

    # --- shutdown ------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Drain for ``drain_timeout``, hand back what is left, flush results, stop Dask."""
        self.stop()
        deadline = time.monotonic() + self.config.drain_timeout
        while time.monotonic() < deadline:
            with self.lock:
                if not self.outstanding:
                    break
                self.lock.wait(0.1)
        with self.lock:
            leftover = list(self.outstanding)
            self.outstanding.clear()
        if leftover:
            for future in list(self.futures.values()):
                future.cancel()
        for thread in self._threads:  # the sender flushes finished results first
            thread.join(timeout=30)
        try:
            # Also ends the session, so what a long-poll abandoned by stop() still receives
            # goes back to the queue rather than waiting for the endpoint's next start.
            reply = self.post("/release", {"session": self.session, "task_ids": leftover,
                                           "disconnect": True})
            if reply.get("released"):
                log.info("handed back %d unfinished tasks", reply["released"])
        except (ServiceUnavailable, errors.ServiceError, SessionReplaced) as exc:
            log.warning("could not hand back %d tasks (%s); the service will reclaim them",
                        len(leftover), exc)
        if self.bridge is not None:
            try:
                self.bridge.stop()
            except Exception as exc:  # noqa: BLE001
                log.warning("stopping the Dask bridge: %s", exc)
        self.engine.close()
        self.http.close()
