"""``RemoteTaskTrigger``: waits in the triggerer, not in a worker slot, for a remote task."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.sdk.exceptions import AirflowNotFoundException
from airflow.triggers.base import BaseTrigger, TriggerEvent

from .hooks import (
    FederatedComputeHook,
    RemoteOutputLog,
    ServiceSettings,
    settings_from_connection,
)


class RemoteTaskTrigger(BaseTrigger):
    """Fire once when fedcompute task ``task_id`` finishes, or when ``deadline`` passes.

    ``deadline`` is a Unix time, so the trigger stays bounded wherever and whenever it is
    resumed. Events: ``{"status": "done" | "timeout" | "error", "task_id": ..., "message": ...}``;
    the operator fetches the outcome itself (results need not be JSON). The task is checked
    at once, then at intervals doubling up to ``poll_interval`` seconds. With
    ``stream_output`` the task's live output goes to the trigger's log as it comes (Airflow 3
    shows the triggerer's log lines of a deferred task in that task's log).
    """

    def __init__(self, task_id: str, task_group_id: str, deadline: float,
                 fedcompute_conn_id: str = FederatedComputeHook.default_conn_name,
                 poll_interval: float = 5.0, stream_output: bool = False) -> None:
        super().__init__()
        self.stream_output = bool(stream_output)
        self.task_id = task_id
        self.task_group_id = task_group_id
        self.deadline = float(deadline)
        self.fedcompute_conn_id = fedcompute_conn_id
        self.poll_interval = float(poll_interval)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}", {
            "task_id": self.task_id,
            "task_group_id": self.task_group_id,
            "deadline": self.deadline,
            "fedcompute_conn_id": self.fedcompute_conn_id,
            "poll_interval": self.poll_interval,
            "stream_output": self.stream_output,
        })

    async def _hook(self) -> FederatedComputeHook:
        # The compat helper avoids a supervisor deadlock of aget_connection on Airflow < 3.3.2.
        from airflow.providers.common.compat.connection import get_async_connection

        try:
            conn = await get_async_connection(self.fedcompute_conn_id, FederatedComputeHook)
            settings = settings_from_connection(conn)
        except AirflowNotFoundException:
            settings = ServiceSettings(None, None)
        return FederatedComputeHook(self.fedcompute_conn_id, settings=settings)

    def _event(self, status: str, message: str = "") -> TriggerEvent:
        return TriggerEvent({"status": status, "task_id": self.task_id, "message": message})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = None
        try:
            hook = await self._hook()
            cursor = "0"
            # Short non-blocking checks, backing off to poll_interval: a blocking long-poll
            # would hold one of the triggerer's few executor threads per deferred task.
            delay = min(0.2, self.poll_interval)
            show = RemoteOutputLog(self.log)
            on_output = show if self.stream_output else None
            while True:
                remaining = self.deadline - time.time()
                if remaining <= 0:
                    yield self._event("timeout", f"remote task {self.task_id} did not finish "
                                                 "before the deadline")
                    return
                done, cursor = await asyncio.to_thread(
                    hook.poll, self.task_id, self.task_group_id, cursor, 0.0, on_output)
                if done:
                    show.end()
                    yield self._event("done")
                    return
                await asyncio.sleep(min(delay, max(self.deadline - time.time(), 0.0)))
                delay = min(delay * 2, self.poll_interval)
        except Exception as exc:  # noqa: BLE001 - hand any failure back to the task
            yield self._event("error", f"{type(exc).__name__}: {exc}")
        finally:
            if hook is not None:
                hook.close()
