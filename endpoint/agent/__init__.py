"""The endpoint agent: leases task batches from the service, runs them on a Dask engine and
sends results back in batches. It only ever makes outbound connections.

Parts, one job each:

=============== ==================================================== =====================
part            job                                                  thread
=============== ==================================================== =====================
ServiceAPI      HTTP calls of the agent routes, error mapping        (callers')
LeasePoller     long-poll for tasks while there is room              main (``run``)
Dispatcher      checks, packing, Dask submission, worker deaths      main + Dask callbacks
ResultSender    batches results to the service, spool when it's down "sender"
OutputForwarder live output of running tasks, to the service         "output"
StatusReporter  heartbeats, engine status, task states, scaling      "status", "heartbeat"
Ledger          the tasks held, shared by all of the above           (a lock)
=============== ==================================================== =====================
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from fedcompute import errors
from fedcompute.protocol import dashboard_path
from fedcompute.retry import Backoff

from .. import multiuser
from ..config import EndpointConfig
from ..engines import get_engine
from ..records import LeasedTask, TaskResult
from ..spool import Spool
from .dispatcher import Dispatcher, FunctionCache
from .ledger import Ledger
from .output import OutputForwarder
from .poller import LeasePoller
from .sender import ResultSender
from .service_api import ServiceAPI, ServiceUnavailable, SessionReplaced
from .status import StatusReporter

log = logging.getLogger(__name__)

__all__ = ["Agent", "LeasedTask", "ServiceAPI", "ServiceUnavailable", "SessionReplaced",
           "TaskResult"]


class Agent:
    """One running endpoint: ``Agent(...).run(on_ready=...)`` until ``stop()``."""

    def __init__(self, config: EndpointConfig, endpoint_id: str, credential: str,
                 service_url: str, workdir: Path):
        self.config = config
        self.endpoint_id = endpoint_id
        self.credential = credential
        self.service_url = service_url.rstrip("/")
        self.workdir = Path(workdir)
        self.session = uuid.uuid4().hex
        self.stopping = threading.Event()
        self.api = ServiceAPI(self.service_url, credential, self.session, config.verify_tls)
        dispatcher_class: type = Dispatcher
        if config.multi_user:  # user processes stand for the engine (endpoint/multiuser/)
            self.engine, dispatcher_class = multiuser.agent_parts(config, self.workdir)
        else:
            self.engine = get_engine(config.engine, self.workdir, container=config.container)
            if self._dask_access() and self.engine.dashboard is not False:
                # The scheduler serves HTTP under the service's path for it, so that the
                # dashboard's pages and websockets work when relayed (DaskBridge).
                self.engine.http_prefix = (urlsplit(self.service_url).path.rstrip("/")
                                           + dashboard_path(endpoint_id))
        self.ledger = Ledger()
        self.functions = FunctionCache()
        self.spool = Spool(self.workdir / "spool")
        self.status = StatusReporter(self.api, self.engine, self.ledger, self.spool,
                                     self.stopping, on_replaced=self.stop)
        self.sender = ResultSender(self.api, self.spool, self.ledger, config.result_batch,
                                   self.stopping)
        self.output = OutputForwarder(self.api, self.stopping)
        self.dispatcher = dispatcher_class(self.engine, config, self.ledger, self.functions,
                                           self._finished, self.status.mark,
                                           lambda: self.status.workers, self.stopping)
        self.poller = LeasePoller(self.api, config, self.ledger, self.functions,
                                  self.dispatcher.dispatch, self.stopping,
                                  status=lambda: self.status.status(fresh=False),
                                  stop_tasks=getattr(self.dispatcher, "stop", None))
        self.status.polling_since = lambda: self.poller.polling_since
        self.status.fail_after_job_refusals = config.fail_after_job_refusals
        self.status.on_jobs_refused = self._jobs_refused
        self.dispatcher.on_output = self.output.add
        self.bridge = None
        self._threads: list[threading.Thread] = []

    def _finished(self, results: list[TaskResult]) -> None:
        self.output.flush_for(r.task_id for r in results)
        self.ledger.finished(r.task_id for r in results)
        self.sender.put(results)

    def _jobs_refused(self, why: str) -> None:
        fail = getattr(self.dispatcher, "fail_waiting", None)
        if fail is not None:
            count = fail(errors.JobSubmissionFailed(why))
            if count:
                log.error("failed %d tasks waiting for workers: %s", count, why)

    # --- lifecycle -----------------------------------------------------------------------

    def run(self, on_ready: Callable[[], None] | None = None) -> None:
        """Start the engine, connect, call ``on_ready``, serve until ``stop()``, then drain
        and shut down."""
        try:
            self.start()
            if on_ready is not None:
                on_ready()
            self.poller.run()
        finally:
            self.shutdown()

    def start(self) -> None:
        self.engine.start()
        self.status.workers = self.engine.worker_count()
        start_lanes = getattr(self.dispatcher, "start_lanes", None)
        if start_lanes is not None:  # before the first lease: a cold endpoint is fast too
            self.dispatcher.on_started = self.status.running
            self.dispatcher.follow_dask_starts()
            start_lanes()
            self.status.on_workers = lambda n: self.dispatcher.lanes and \
                self.dispatcher.lanes.refresh()
        self._connect()
        for target, name in ((self.sender.run, "sender"), (self.status.follow_engine, "status"),
                             (self.status.beat, "heartbeat")):
            thread = threading.Thread(target=target, name=f"fedcompute-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self._start_bridge()

    def stop(self) -> None:
        """Ask the agent to stop (from a signal handler or another thread)."""
        self.stopping.set()
        self.ledger.wake()

    def _connect(self) -> None:
        backoff = Backoff(0.5, 15.0)
        while not self.stopping.is_set():
            try:
                reply = self.api.connect(self.status.status(), self.status.versions)
            except ServiceUnavailable as exc:
                delay = backoff.next()
                log.warning("cannot reach the service (%s); retrying in %.1fs", exc, delay)
                self.stopping.wait(delay)
                continue
            self.status.heartbeat_interval = float(reply.get("heartbeat_interval", 5.0))
            self.status.heartbeat_timeout = float(reply.get("heartbeat_timeout", 30.0))
            log.info("connected as endpoint %s (session %s); %d earlier leases reclaimed",
                     self.endpoint_id, self.session, reply.get("reclaimed", 0))
            return

    def _dask_access(self) -> bool:
        # A Dask client can run any code, so restricted endpoints keep Dask access off.
        return (self.config.allowed_functions is None and self.config.dask_access
                and not self.config.multi_user)

    def _start_bridge(self) -> None:
        if not self._dask_access():
            log.info("Dask access off (allowed_functions is set, or dask_access: false)")
            return
        from ..dask_bridge import DaskBridge

        prefix = self.engine.http_prefix
        try:
            self.bridge = DaskBridge(self.service_url, self.credential, self.endpoint_id,
                                     self.engine, max_workers=self.config.dask_max_workers,
                                     verify=self.config.verify_tls,
                                     dashboard=prefix if prefix != "/" else "")
            self.bridge.start()
        except Exception as exc:  # noqa: BLE001 - the task path must not depend on it
            log.warning("Dask relay bridge not started: %s", exc)
            self.bridge = None

    def shutdown(self) -> None:
        """Drain for ``drain_timeout``, hand back what is left, flush results, stop Dask."""
        self.stop()
        self.ledger.wait_until_done(self.config.drain_timeout)
        leftover = self.ledger.abandon()
        if leftover:
            self.dispatcher.cancel_all()
        for thread in self._threads:  # the sender flushes finished results first
            thread.join(timeout=30)
        try:
            # Also ends the session, so what a long-poll abandoned by stop() still receives
            # goes back to the queue rather than waiting for the endpoint's next start.
            reply = self.api.release(leftover, disconnect=True)
            if reply.get("released"):
                log.info("handed back %d unfinished tasks", reply["released"])
        except (ServiceUnavailable, errors.ServiceError, SessionReplaced) as exc:
            log.warning("could not hand back %d tasks (%s); the service will reclaim them",
                        len(leftover), exc)
        close = getattr(self.dispatcher, "close", None)
        if close is not None:
            close()
        if self.bridge is not None:
            try:
                self.bridge.stop()
            except Exception as exc:  # noqa: BLE001
                log.warning("stopping the Dask bridge: %s", exc)
        self.engine.close()
        self.api.close()
        self.poller.finished()
