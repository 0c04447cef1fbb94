"""Moab: dask-jobqueue's ``MoabCluster``. Job states come from Dask (a job whose worker has
connected is running, one that has not is pending)."""

from __future__ import annotations

from .jobqueue import JobQueueEngine


class MoabEngine(JobQueueEngine):
    """``engine: {type: moab, cores: 1, memory: 2GB, walltime: "01:00:00", queue: ...}``."""

    name = "moab"
    cluster_class_name = "MoabCluster"
