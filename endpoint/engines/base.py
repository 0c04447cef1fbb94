"""The engine interface: a Dask cluster the agent submits packed tasks to."""

from __future__ import annotations

import abc
import logging
from pathlib import Path
from typing import Any

import dask
from distributed import Client
from distributed.deploy import Cluster
from distributed.diagnostics.plugin import SchedulerPlugin

from .. import _compat
from ..containers import container_spec
from ..launchers import LAUNCHER_ENV, check_launcher

#: Dask settings every engine runs with. A task whose worker dies is not retried by Dask on
#: other workers (the agent splits packed tasks and fails only the culprit); remote clients
#: never talk to workers directly.
DASK_CONFIG = {
    "distributed.scheduler.allowed-failures": 0,
    "distributed.worker.daemon": False,
    "distributed.admin.tick.limit": "5s",
    "distributed.scheduler.work-stealing": True,
    "distributed.client.heartbeat": "5s",
    "distributed.worker.memory.target": False,
    "distributed.worker.memory.spill": False,
}


BATCH_INTERVAL = 0.001


class _FastStreams(SchedulerPlugin):
    """Sets a short batching interval on the scheduler's stream to each worker as it joins."""

    name = "fedcompute-fast-streams"

    def __init__(self, scheduler) -> None:
        self.scheduler = scheduler
        for address in list(_compat.worker_streams(scheduler)):
            self.add_worker(scheduler, address)

    def add_worker(self, scheduler=None, worker=None) -> None:
        stream = _compat.worker_streams(self.scheduler).get(worker)
        if stream is not None:
            stream.interval = BATCH_INTERVAL


async def _add_plugin(scheduler) -> None:
    scheduler.add_plugin(_FastStreams(scheduler), name=_FastStreams.name)


class Engine(abc.ABC):
    """A Dask cluster plus a client to it, started and stopped by the agent."""

    name = "base"

    def __init__(self, options: dict[str, Any], workdir: Path,
                 container: dict[str, Any] | None = None):
        self.options = dict(options)
        self.workdir = Path(workdir)
        #: The endpoint's ``container:`` (its workers run in that image), checked.
        self.container = container_spec(container) if container else None
        #: ``mpi_launcher`` (an option of every engine), told to workers as an env variable.
        self.mpi_launcher = check_launcher(self.options.get("mpi_launcher"))
        self.cluster: Cluster | None = None
        self.client: Client | None = None
        #: Where the scheduler serves its HTTP routes (health, metrics, the dashboard); the
        #: agent sets the service's dashboard path before ``start`` (core ``dashboard_path``).
        self.http_prefix = "/"

    @property
    def dashboard(self) -> bool | None:
        """The ``dashboard`` option: True starts Dask's dashboard with the scheduler, None
        (unset) starts it on the first visit through the service, False keeps it off."""
        value = self.options.get("dashboard")
        return None if value is None else bool(value)

    def worker_env(self) -> dict[str, str]:
        """Environment variables the engine's workers get: the MPI launcher setting."""
        return {LAUNCHER_ENV: self.mpi_launcher} if self.mpi_launcher != "auto" else {}

    @abc.abstractmethod
    def make_cluster(self) -> Cluster:
        """Create the Dask cluster (bound to 127.0.0.1 or the configured interface)."""

    def start(self) -> None:
        dask.config.set(DASK_CONFIG)
        self.cluster = self.make_cluster()
        self.client = Client(self.cluster, set_as_default=False)
        self._tune_batching()

    def _tune_batching(self) -> None:
        """Shorten Dask's message batching on the agent's own links.

        Dask batches a message sent within an interval of the previous one (10 ms client to
        scheduler, 5 ms scheduler to worker); a steady stream of short tasks always hits that
        window, so each round trip waits for it. 1 ms keeps batching under load.
        """
        _compat.set_client_batching(self.client, BATCH_INTERVAL)
        scheduler = getattr(self.cluster, "scheduler", None)
        if scheduler is not None and hasattr(scheduler, "add_plugin"):
            self.client.sync(_add_plugin, scheduler)

    def worker_count(self) -> int:
        if self.client is None:
            return 0
        return len(self.client.scheduler_info(n_workers=-1).get("workers", {}))

    def total_threads(self) -> int:
        if self.client is None:
            return 0
        return sum(w.get("nthreads", 1) for w in
                   self.client.scheduler_info(n_workers=-1).get("workers", {}).values())

    def status(self) -> dict[str, Any]:
        return {"engine": self.name, "workers": self.worker_count()}

    def job_refusal(self) -> tuple[float, int, str] | None:
        """Batch engines: job submissions refused in a row, as ``(seconds since the first,
        how many, the batch system's error)``; None while they are accepted (or no jobs)."""
        return None

    def scale_for(self, outstanding_tasks: int) -> None:  # noqa: B027 - optional hook
        """Hint: tasks leased and not finished (engines with batch jobs scale on it)."""

    def close(self) -> None:
        for thing in (self.client, self.cluster):
            if thing is not None:
                try:
                    thing.close()
                except Exception as exc:  # noqa: BLE001 - best effort on shutdown
                    logging.getLogger(__name__).warning("closing %s: %s", thing, exc)
