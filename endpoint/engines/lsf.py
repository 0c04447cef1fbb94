"""IBM Spectrum LSF: dask-jobqueue's ``LSFCluster``. Job states come from Dask (a job whose worker has
connected is running, one that has not is pending)."""

from __future__ import annotations

from .jobqueue import JobQueueEngine


class LSFEngine(JobQueueEngine):
    """``engine: {type: lsf, cores: 1, memory: 2GB, walltime: "01:00", queue: ...}``."""

    name = "lsf"
    cluster_class_name = "LSFCluster"
    walltime_colon_units = "hm"  # bsub -W [hours:]minutes
    walltime_bare_unit = 60.0
