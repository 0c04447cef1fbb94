"""PBS (OpenPBS, PBS Pro, Torque): dask-jobqueue's ``PBSCluster``. Job states come from Dask (a job whose worker has
connected is running, one that has not is pending)."""

from __future__ import annotations

from .jobqueue import JobQueueEngine


class PBSEngine(JobQueueEngine):
    """``engine: {type: pbs, cores: 1, memory: 2GB, walltime: "01:00:00", queue: ...}``."""

    name = "pbs"
    cluster_class_name = "PBSCluster"
