"""Batch jobs the batch system refuses (a bad account, partition or limit): remembered, so that
the agent can fail the tasks waiting for them instead of leaving them waiting forever.

``sbatch``/``qsub`` failing raises in dask-jobqueue's ``Job.start``, inside SpecCluster's
rescaling task, where nobody reads it; the refused job also stays in the cluster's plan, so
that Adaptive never asks again. :func:`recording` wraps the job class to record each outcome
and mark the refused job, which the engine then drops from the plan (Adaptive tries again).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

log = logging.getLogger(__name__)


class JobRefusals:
    """The current streak of refused job submissions (reset by a job the system accepts)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.since: float | None = None   # first refusal of the streak
        self.count = 0
        self.error = ""

    def refused(self, exc: BaseException) -> None:
        with self._lock:
            if self.since is None:
                self.since = time.time()
            self.count += 1
            self.error = _scheduler_text(exc)
            count = self.count
        # Adaptive asks again every round: say it on the first refusal, then now and then.
        (log.warning if count == 1 or count % 50 == 0 else log.debug)(
            "the batch system refused a job (%d in a row): %s", count, self.error)

    def accepted(self) -> None:
        with self._lock:
            self.since, self.count, self.error = None, 0, ""

    def streak(self) -> tuple[float, int, str] | None:
        """``(seconds since the first refusal, refusals, the last error)``, or None."""
        with self._lock:
            if self.since is None:
                return None
            return time.time() - self.since, self.count, self.error


def _scheduler_text(exc: BaseException) -> str:
    """What the batch system said: dask-jobqueue's message holds the command's stderr."""
    text = str(exc)
    if "stderr:" in text:
        text = text.split("stderr:", 1)[1]
    return " ".join(text.split())[:2000] or type(exc).__name__


def recording(job_cls: type, refusals: JobRefusals) -> type:
    """``job_cls`` whose submissions report to ``refusals``; a refused job gets
    ``refused = True``."""

    class RecordedJob(job_cls):  # type: ignore[misc, valid-type]
        refused = False

        async def start(self) -> Any:
            try:
                out = await super().start()
            except Exception as exc:
                self.refused = True
                refusals.refused(exc)
                raise
            refusals.accepted()
            return out

    RecordedJob.__name__ = RecordedJob.__qualname__ = job_cls.__name__
    return RecordedJob
