"""What the agent and its Dask workers hand each other: leased tasks and their results."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from fedcompute import errors, serialize


@dataclass(slots=True)
class LeasedTask:
    """A task as the agent holds it: what the service leased, and what the endpoint decided
    about running it."""

    task_id: str
    function_id: str
    payload: bytes
    resource_specification: dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    attempt: int = 0
    #: The user who submitted it.
    owner: str = ""
    #: Dask worker resources it needs (e.g. {"GPU": 1}), None for any worker.
    resources: dict[str, float] | None = None
    #: Seconds it may run, None for no limit.
    walltime: float | None = None
    #: Runs through a launcher (MPI ranks, a container; see ``launchers.py``).
    launch: bool = False
    #: May run on the fast lane; ``resource_specification={"fast_lane": False}`` asks for a
    #: Dask task (``distributed.get_worker()``, ``worker_client()`` work inside it).
    lane: bool = True

    @classmethod
    def from_lease(cls, leased: dict[str, Any]) -> LeasedTask:
        return cls(leased["task_id"], leased["function_id"], leased["payload"],
                   leased.get("resource_specification"), leased.get("options"),
                   int(leased.get("attempt") or 0), leased.get("owner") or "")

    def lane_wire(self) -> dict[str, Any]:
        """What a lane executor needs of it (``LeasedTask(**wire)`` on the other side)."""
        return {"task_id": self.task_id, "function_id": self.function_id,
                "payload": self.payload, "resource_specification": self.resource_specification,
                "options": self.options, "attempt": self.attempt, "owner": self.owner,
                "walltime": self.walltime}

    @property
    def capture_output(self) -> bool:
        return bool((self.options or {}).get("capture_output"))

    @property
    def stream_output(self) -> bool:
        """Its output goes to the submitter while it runs (it is captured too)."""
        return bool((self.options or {}).get("stream_output"))

    @property
    def packable(self) -> bool:
        """May share a Dask task with other short tasks (no resources, walltime or launch)."""
        return self.resources is None and self.walltime is None and not self.launch


@dataclass(slots=True)
class TaskResult:
    """A finished task, as the agent reports it to the service."""

    task_id: str
    status: str  # "success" | "failed" | "cancelled" (stopped while it ran)
    result: bytes | None = None
    exception: dict[str, Any] | None = None
    stdout: str | None = None
    stderr: str | None = None
    started: float | None = None
    finished: float = field(default_factory=time.time)

    @classmethod
    def failure(cls, task_id: str, exc: BaseException) -> TaskResult:
        return cls(task_id, "failed", exception=serialize.pack_exception(exc))

    @classmethod
    def cancelled(cls, task_id: str, how: str = "") -> TaskResult:
        """The task was stopped by a cancellation (``how``: e.g. "while it ran")."""
        return cls(task_id, "cancelled", exception=serialize.pack_exception(
            errors.TaskCancelled(f"task {task_id} was cancelled {how}".strip())))

    @property
    def duration(self) -> float | None:
        return None if self.started is None else self.finished - self.started

    def wire(self) -> dict[str, Any]:
        """The ``TaskResult`` message of the agent API."""
        out: dict[str, Any] = {"task_id": self.task_id, "status": self.status,
                               "timings": {"finished": self.finished}}
        if self.started is not None:
            out["timings"]["started"] = self.started
        for name in ("result", "exception", "stdout", "stderr"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> TaskResult:
        timings = data.get("timings") or {}
        return cls(data["task_id"], data["status"], data.get("result"), data.get("exception"),
                   data.get("stdout"), data.get("stderr"), timings.get("started"),
                   timings.get("finished", time.time()))
