"""OAR: dask-jobqueue's ``OARCluster``. Job states come from Dask (a job whose worker has
connected is running, one that has not is pending)."""

from __future__ import annotations

from .jobqueue import JobQueueEngine


class OAREngine(JobQueueEngine):
    """``engine: {type: oar, cores: 1, memory: 2GB, walltime: "01:00:00", queue: ...}``."""

    name = "oar"
    cluster_class_name = "OARCluster"
