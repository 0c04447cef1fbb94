"""``NestedTaskRunner``: the task runner a remote task body sees, for tasks it submits itself.

Default mode only (with ``remote_engine=True`` the flow's own runner is rebuilt on the
endpoint by Prefect's hydrated context). Nested tasks go through the service to the same
endpoint, as the submitting runner's user; their Prefect engines run in the body's process.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextvars import Context, copy_context
from typing import TYPE_CHECKING, Any

from prefect.client.schemas.objects import RunInput
from prefect.context import FlowRunContext, SettingsContext, TaskRunContext
from prefect.futures import PrefectFuture

from . import _compat
from ._remote import BodyScope
from .runner import FederatedFuture, FederatedTaskRunner

if TYPE_CHECKING:
    from prefect.tasks import Task

__all__ = ["NestedTaskRunner"]


class NestedTaskRunner(FederatedTaskRunner):
    """The task runner inside a remote task body (default mode): what ``my_task.submit()``
    there uses. Nested tasks go through the service to the same endpoint, as the submitting
    runner's user; their Prefect engines run here, in the body's process, so this needs the
    Prefect API from the endpoint. Started by the first nested submission; the body waits for
    its nested tasks before it returns, like a flow.
    """

    def __init__(self, scope: BodyScope, parameters: dict[str, Any] | None = None):
        nested = scope.nested or {}
        super().__init__(nested.get("endpoint_id") or "nested", **nested.get("options", {}))
        self._scope = scope
        self._hydrated: Context | None = None
        self._entered = False

    def __reduce__(self) -> Any:
        # A nested runner is pickled along with its flow context only when its bodies
        # submit again: what travels is its configuration.
        return FederatedTaskRunner, (self.endpoint_id,), {"config": self._config(),
                                                          "service_url": None}

    def submit(self, task: Task, parameters: dict[str, Any],
               wait_for: Iterable[PrefectFuture[Any]] | None = None,
               dependencies: dict[str, set[RunInput]] | None = None) -> FederatedFuture:
        if not self._entered:
            if self._scope.auth is None:
                raise RuntimeError(
                    f"task {task.name!r} was submitted from inside a remote task run, but its "
                    "runner has nested_submission=False")
            if not (self._scope.nested or {}).get("context"):
                raise RuntimeError(
                    f"task {task.name!r} was submitted from inside a remote task run that has "
                    "no flow run context to submit it in (the flow's context could not be "
                    "pickled)")
            self._hydrate()
            self.__enter__()
            self._entered = True
        return super().submit(task, parameters, wait_for, dependencies)

    def _hydrate(self) -> None:
        """The flow run's real context (settings, Prefect client, result store), rebuilt from
        the shipped serialized one, for the nested tasks' engines only: the body keeps its
        lightweight context."""
        from prefect.client.orchestration import get_client

        serialized = self._scope.nested["context"]  # type: ignore[index]
        _compat.rebuild_context_models()
        context = copy_context()

        def enter() -> None:
            if settings := serialized.get("settings_context"):
                SettingsContext(**settings).__enter__()
            client = get_client(sync_client=True)
            problem = client.api_healthcheck()
            if problem is not None:
                raise RuntimeError(
                    "a task submitted from inside a remote task run runs its Prefect engine "
                    f"on the endpoint, which cannot reach the Prefect API at {client.api_url}: "
                    f"{problem}") from problem
            flow_ctx = FlowRunContext(**serialized["flow_run_context"], client=client,
                                      task_runner=self, detached=True)
            flow_ctx.__enter__()
            # The body's own (lightweight) task run context stays the nested runs' parent;
            # their engines also read the result store and client from it.
            parent = TaskRunContext.get()
            if parent is not None:
                parent.model_copy(update={"result_store": flow_ctx.result_store,
                                          "client": client}).__enter__()

        context.run(enter)
        self._hydrated = context

    def _submission_context(self) -> Context:
        assert self._hydrated is not None
        return self._hydrated.copy()

    def _nested_context(self) -> dict[str, Any] | None:
        return self._scope.nested

    def _auth(self) -> dict | None:
        return self._scope.auth

    def finish(self) -> None:
        """Wait for the nested tasks and stop (called when the body returns)."""
        if self._entered:
            self._entered = False
            self.__exit__(None, None, None)
