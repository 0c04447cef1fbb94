"""Every use of Prefect internals by ``FederatedTaskRunner``, in one place.

Prefect has no public API yet for what a task runner that runs only the *function body*
elsewhere needs: replacing the body's call inside the task engine, sharing one API client among
engines on one loop, routing a task run's API logs. Each function below names what would
replace it; ``tests/plugins/prefect/test_compat.py`` fails loudly when one of these internals
changes shape, so a Prefect upgrade breaks a test here rather than a flow in production.

Imports of Prefect are inside the functions: ``_remote`` (which runs in Dask workers, maybe
without Prefect) uses the logging helpers only when Prefect is loaded.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextvars import Context
from typing import Any


def uuid7() -> uuid.UUID:
    """A time-ordered task run id, as Prefect's own runners make them.

    Replaced by: ``uuid.uuid7()`` (Python >= 3.14). Private: ``prefect._internal.uuid7``.
    """
    from prefect._internal.uuid7 import uuid7 as _uuid7

    return _uuid7()


def raise_if_flow_run_suspension_requested() -> None:
    """Stop a task run's loop when its flow run was asked to suspend (what Prefect's own
    ``run_task_async`` does between attempts).

    Replaced by: none yet. Private: ``prefect._flow_run_suspension``.
    """
    from prefect._flow_run_suspension import raise_if_flow_run_suspension_requested as _raise

    _raise()


def share_async_client(context: Context, client_context: Any) -> None:
    """Make every task engine started in ``context`` reuse ``client_context``'s Prefect client
    (``AsyncClientContext.get_or_create`` reuses the context it finds), instead of one HTTP
    client per task run.

    Replaced by: none yet (``AsyncClientContext`` has no public "enter in that context").
    Private: the ``AsyncClientContext.__var__`` context variable.
    """
    from prefect.context import AsyncClientContext

    context.run(AsyncClientContext.__var__.set, client_context)


def api_log_sink() -> Callable[[dict], None] | None:
    """The sink Prefect's API log handler sends records to (None: its log worker).

    Replaced by: a getter next to ``prefect.logging.handlers.set_api_log_sink`` (none yet).
    Private: ``prefect.logging.handlers._api_log_sink``.
    """
    from prefect.logging import handlers

    return handlers._api_log_sink


def set_api_log_sink(sink: Callable[[dict], None]) -> None:
    """Route Prefect's API log records through ``sink`` (public, kept here with its getter)."""
    from prefect.logging import handlers

    handlers.set_api_log_sink(sink)


def send_to_api_log_worker(log: dict) -> None:
    """What Prefect does with an API log record when no sink is set."""
    from prefect.logging import handlers

    handlers.APILogWorker.instance().send(log)


def engine_with_body(call_body: Callable[[Any, dict[str, Any]], Any]) -> type:
    """Prefect's ``AsyncTaskRunEngine`` with the task's function call replaced by
    ``await call_body(engine, parameters)`` (states, retries, caching, timeouts, hooks and
    result persistence stay Prefect's).

    Replaced by: none yet (Prefect has no hook for "run the body elsewhere"; prefect-dask and
    ProcessPoolTaskRunner move the whole engine instead). Internal: the engine's
    ``call_task_fn(transaction)`` / ``handle_success(result, transaction=)`` protocol.
    """
    from prefect.task_engine import AsyncTaskRunEngine

    class BodyElsewhereEngine(AsyncTaskRunEngine):
        async def call_task_fn(self, transaction: Any) -> Any:
            # AsyncTaskRunEngine.call_task_fn, with the body's call replaced.
            if transaction.is_committed():
                result = await transaction.read()
            else:
                result = await call_body(self, self.parameters or {})
            await self.handle_success(result, transaction=transaction)
            return result

    return BodyElsewhereEngine


async def run_engine(engine: Any, task_run_id: uuid.UUID | None,
                     dependencies: dict | None) -> Any:
    """Drive a task engine through its run loop; return its final state.

    This is the body of ``prefect.task_engine.run_task_async`` for an engine built here.
    Replaced by: a ``run_task_async(engine=...)`` (none yet). Internal: the engine's
    ``start``/``is_running``/``wait_until_ready``/``asset_context``/``run_context``/
    ``transaction_context`` protocol.
    """
    async with engine.start(task_run_id=task_run_id, dependencies=dependencies):
        while engine.is_running():
            await engine.wait_until_ready()
            async with (
                engine.asset_context(),
                engine.run_context(),
                engine.transaction_context() as txn,
            ):
                await engine.call_task_fn(txn)
            raise_if_flow_run_suspension_requested()
    return engine.state


def run_engine_sync(engine: Any, task_run_id: uuid.UUID | None, dependencies: dict | None) -> Any:
    """``run_engine`` for Prefect's ``SyncTaskRunEngine`` (the body of ``run_task_sync``)."""
    with engine.start(task_run_id=task_run_id, dependencies=dependencies):
        while engine.is_running():
            engine.wait_until_ready()
            with (
                engine.asset_context(),
                engine.run_context(),
                engine.transaction_context() as txn,
            ):
                engine.call_task_fn(txn)
            raise_if_flow_run_suspension_requested()
    return engine.state


def rebuild_context_models() -> None:
    """Finish Prefect's run-context models in a process that has not run a flow (their
    annotations name ``Flow``/``Task``, imported late to avoid an import cycle), as
    ``prefect.context.hydrated_context`` does before building them.

    Replaced by: none yet (Prefect's own TODO there). Private:
    ``prefect._internal.result_records.ResultRecordMetadata``.
    """
    from prefect._internal.result_records import ResultRecordMetadata
    from prefect.context import FlowRunContext, TaskRunContext
    from prefect.flows import Flow
    from prefect.tasks import Task

    types = {"Flow": Flow, "Task": Task, "ResultRecordMetadata": ResultRecordMetadata}
    FlowRunContext.model_rebuild(_types_namespace=types)
    TaskRunContext.model_rebuild(_types_namespace=types)
