"""HTCondor: dask-jobqueue's ``HTCondorCluster``. Job states come from Dask (a job whose worker has
connected is running, one that has not is pending)."""

from __future__ import annotations

from .jobqueue import JobQueueEngine


class HTCondorEngine(JobQueueEngine):
    """``engine: {type: htcondor, cores: 1, memory: 2GB, disk: 1GB}``."""

    name = "htcondor"
    cluster_class_name = "HTCondorCluster"
