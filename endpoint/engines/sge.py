"""Grid Engine (SGE, Son of Grid Engine, UGE): dask-jobqueue's ``SGECluster``; job states from
``qstat``."""

from __future__ import annotations

import getpass

from .jobqueue import ENDING, GONE, PENDING, RUNNING, JobQueueEngine


class SGEEngine(JobQueueEngine):
    """``engine: {type: sge, cores: 1, memory: 2GB, walltime: "01:00:00", queue: all.q}``."""

    name = "sge"
    cluster_class_name = "SGECluster"

    def job_states_command(self, job_ids: list[str]) -> list[str]:
        return ["qstat", "-u", getpass.getuser()]

    def parse_job_states(self, output: str, job_ids: list[str]) -> dict[str, str]:
        return parse_qstat(output, job_ids)


def parse_qstat(output: str, job_ids: list[str]) -> dict[str, str]:
    """Grid Engine ``qstat`` output → job id → state (missing ids: ``gone``).

    State letters: ``qw``/``hqw``/``w`` waiting, ``r``/``t``/``Rr`` running, ``d``... being
    deleted; ``E`` is an error state that never runs by itself: treated as ended.
    """
    states = dict.fromkeys(job_ids, GONE)
    for line in output.splitlines():
        fields = line.split()
        if len(fields) < 5 or fields[0] not in states:
            continue
        code = fields[4]
        if "E" in code:
            state = GONE
        elif "d" in code:
            state = ENDING
        elif "r" in code or "t" in code:
            state = RUNNING
        else:
            state = PENDING
        states[fields[0]] = state
    return states
