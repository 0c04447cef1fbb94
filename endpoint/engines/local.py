"""The default engine: a Dask LocalCluster of worker processes on this machine."""

from __future__ import annotations

import logging
import os

from distributed import LocalCluster

from .base import Engine

OPTIONS = {"type", "workers", "threads_per_worker", "memory_limit", "dashboard",
           "dashboard_address", "resources"}


class LocalEngine(Engine):
    """``engine: {type: local, workers: N, threads_per_worker: 1, memory_limit: auto,
    dashboard: false, resources: {GPU: 1}}``."""

    name = "local"

    def __init__(self, options, workdir):
        unknown = sorted(set(options) - OPTIONS)
        if unknown:
            raise ValueError(f"unknown option {unknown[0]!r} for engine 'local' "
                             f"(known: {', '.join(sorted(OPTIONS))})")
        super().__init__(options, workdir)

    def make_cluster(self) -> LocalCluster:
        opts = self.options
        dashboard = opts.get("dashboard", False)
        return LocalCluster(
            n_workers=int(opts.get("workers") or os.cpu_count() or 1),
            threads_per_worker=int(opts.get("threads_per_worker", 1)),
            processes=True,
            host="127.0.0.1",
            scheduler_port=0,
            # Dask's HTTP server starts even without a dashboard: keep it on loopback, port 0
            dashboard_address=opts.get("dashboard_address", "127.0.0.1:0"),
            scheduler_kwargs={"dashboard": bool(dashboard)},
            memory_limit=opts.get("memory_limit", "auto"),
            resources=opts.get("resources"),
            silence_logs=logging.WARNING,
            local_directory=str(self.workdir / "dask-worker-space"),
        )
