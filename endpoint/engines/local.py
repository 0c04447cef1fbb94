"""The default engine: a Dask LocalCluster of worker processes on this machine, or, with the
endpoint's ``container:``, the same workers each inside a container (a ``SpecCluster`` of
:class:`~fedcompute.endpoint.containers.ContainerWorker`)."""

from __future__ import annotations

import difflib
import logging
import os
import time

from distributed import LocalCluster, Scheduler, SpecCluster

from ..containers import container_worker_class
from .base import DASK_CONFIG, Engine
from .resources import worker_resources_arg

OPTIONS = {"type", "workers", "threads_per_worker", "memory_limit", "dashboard",
           "dashboard_address", "resources", "mpi_launcher", "container_start_timeout"}


def dask_env() -> dict[str, str]:
    """The worker settings of ``DASK_CONFIG`` as ``DASK_...`` variables, for workers that do
    not share this process's Dask config (containers)."""
    return {"DASK_" + key.upper().replace(".", "__").replace("-", "_"): str(value)
            for key, value in DASK_CONFIG.items() if key.startswith("distributed.worker.")}


class LocalEngine(Engine):
    """``engine: {type: local, workers: N, threads_per_worker: 1, memory_limit: auto,
    dashboard: false, resources: {GPU: 1}, mpi_launcher: auto}``."""

    name = "local"

    def __init__(self, options, workdir, container=None):
        unknown = sorted(set(options) - OPTIONS)
        if unknown:
            close = difflib.get_close_matches(unknown[0], sorted(OPTIONS), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"unknown option {unknown[0]!r} for engine 'local' "
                             f"({hint}known: {', '.join(sorted(OPTIONS))})")
        if options.get("resources") is not None:
            # what every worker advertises: amounts only (worker_resources_arg's rule)
            worker_resources_arg(options["resources"])
        super().__init__(options, workdir, container)
        self.n_workers = int(self.options.get("workers") or os.cpu_count() or 1)

    def make_cluster(self) -> LocalCluster | SpecCluster:
        if self.container is not None:
            return self._container_cluster()
        opts = self.options
        return LocalCluster(
            n_workers=self.n_workers,
            threads_per_worker=int(opts.get("threads_per_worker", 1)),
            processes=True,
            host="127.0.0.1",
            scheduler_port=0,
            # Dask's HTTP server starts even without a dashboard: keep it on loopback, port 0
            dashboard_address=opts.get("dashboard_address", "127.0.0.1:0"),
            scheduler_kwargs={"dashboard": bool(self.dashboard),
                              "http_prefix": self.http_prefix},
            memory_limit=opts.get("memory_limit", "auto"),
            resources=opts.get("resources"),
            silence_logs=logging.WARNING,
            local_directory=str(self.workdir / "dask-worker-space"),
            env=self.worker_env() or None,
        )

    def worker_spec(self) -> dict:
        """The ``SpecCluster`` spec of one containerized worker."""
        opts = self.options
        return {"cls": container_worker_class(), "options": {
            "container": self.container,
            "nthreads": int(opts.get("threads_per_worker", 1)),
            "memory_limit": opts.get("memory_limit", "auto"),
            "resources": opts.get("resources"),
            "env": {**dask_env(), **self.worker_env()},
            "log_directory": str(self.workdir / "container-workers"),
        }}

    def _container_cluster(self) -> SpecCluster:
        opts = self.options
        scheduler = {"cls": Scheduler, "options": {
            "host": "127.0.0.1", "port": 0,
            "dashboard": bool(self.dashboard), "http_prefix": self.http_prefix,
            "dashboard_address": opts.get("dashboard_address", "127.0.0.1:0")}}
        worker = self.worker_spec()
        return SpecCluster(scheduler=scheduler, workers=dict.fromkeys(range(self.n_workers),
                                                                      worker),
                           worker=worker, silence_logs=logging.WARNING,
                           name="fedcompute-local-containers")

    def start(self) -> None:
        super().start()
        if self.container is not None:
            self._wait_for_containers(float(self.options.get("container_start_timeout", 120)))

    def _wait_for_containers(self, timeout: float) -> None:
        """Workers in containers start after the cluster does: wait for them as LocalCluster
        waits for its own, and fail with the container's own words if one exits."""
        deadline = time.monotonic() + timeout
        while self.worker_count() < self.n_workers:
            for worker in list(self.cluster.workers.values()):
                reason = worker.exited()
                if reason:
                    self.close()
                    raise RuntimeError(f"endpoint container: {reason}")
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError(
                    f"endpoint container: {self.n_workers} workers in {self.container.image} "
                    f"did not connect within {timeout:.0f}s; see "
                    f"{self.workdir / 'container-workers'}")
            time.sleep(0.2)
