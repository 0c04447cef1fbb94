"""Slurm: dask-jobqueue's ``SLURMCluster``; job states from ``squeue``."""

from __future__ import annotations

from .jobqueue import ENDING, GONE, PENDING, RUNNING, JobQueueEngine

#: squeue's %T states → ours (anything else, e.g. COMPLETED or CANCELLED, has ended).
STATES = {
    "PENDING": PENDING, "CONFIGURING": PENDING, "REQUEUED": PENDING, "REQUEUE_HOLD": PENDING,
    "REQUEUE_FED": PENDING, "RESV_DEL_HOLD": PENDING, "SUSPENDED": PENDING,
    "RUNNING": RUNNING, "COMPLETING": ENDING, "STOPPED": ENDING, "SIGNALING": ENDING,
    "STAGE_OUT": ENDING, "RESIZING": RUNNING,
}


class SLURMEngine(JobQueueEngine):
    """``engine: {type: slurm, cores: 1, memory: 2GB, walltime: "01:00:00", queue: ...}``."""

    name = "slurm"
    cluster_class_name = "SLURMCluster"
    walltime_bare_unit = 60.0  # sbatch -t 30 means 30 minutes
    deprecated = {"project": "use account (dask-jobqueue renamed it for Slurm)"}

    def job_states_command(self, job_ids: list[str]) -> list[str]:
        return ["squeue", "--noheader", "--jobs", ",".join(job_ids), "--format", "%i %T"]

    def parse_job_states(self, output: str, job_ids: list[str]) -> dict[str, str]:
        return parse_squeue(output, job_ids)


def parse_squeue(output: str, job_ids: list[str]) -> dict[str, str]:
    """``squeue -h -j IDS -o "%i %T"`` output → job id → state (missing ids: ``gone``)."""
    states = dict.fromkeys(job_ids, GONE)
    for line in output.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] in states:
            states[fields[0]] = STATES.get(fields[1].upper(), GONE)
    return states
