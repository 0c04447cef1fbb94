"""``fedcompute.plugins.prefect._compat``: each Prefect internal it wraps still has the shape
``FederatedTaskRunner`` relies on. A failure here means a Prefect upgrade changed one of them:
fix ``_compat.py`` (and only it). No server needed."""

from __future__ import annotations

import asyncio
import inspect
import uuid
from contextvars import copy_context

import pytest
from fedcompute.plugins.prefect import _compat
from prefect.context import AsyncClientContext, FlowRunContext
from prefect.logging import handlers
from prefect.task_engine import AsyncTaskRunEngine, SyncTaskRunEngine, run_task_async, run_task_sync


def test_uuid7_is_time_ordered():
    first, second = _compat.uuid7(), _compat.uuid7()
    assert isinstance(first, uuid.UUID) and first.version == 7
    assert first.int >> 80 <= second.int >> 80  # the leading 48 bits: milliseconds


def test_flow_run_suspension_check_outside_a_flow_is_a_no_op():
    assert FlowRunContext.get() is None
    _compat.raise_if_flow_run_suspension_requested()


def test_async_client_context_variable():
    assert isinstance(AsyncClientContext.__var__.get(None), AsyncClientContext | None)
    marker = object()
    context = copy_context()
    _compat.share_async_client(context, marker)
    assert context.run(AsyncClientContext.__var__.get) is marker
    assert AsyncClientContext.__var__.get(None) is not marker  # only in that context


def test_api_log_sink_getter_and_setter():
    assert hasattr(handlers, "_api_log_sink") and callable(handlers.set_api_log_sink)
    previous = _compat.api_log_sink()
    seen = []
    try:
        _compat.set_api_log_sink(seen.append)
        assert _compat.api_log_sink() == seen.append
        handlers.emit_api_log({"message": "probe"})
        assert seen == [{"message": "probe"}]
    finally:
        handlers.set_api_log_sink(previous)
    assert callable(handlers.APILogWorker.instance) and callable(handlers.APILogWorker.send)


def _params(fn) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p != "self"]


def test_engine_protocol():
    """The engine methods ``engine_with_body``/``run_engine`` drive, and that Prefect's own
    ``run_task_async``/``run_task_sync`` still drive them the same way."""
    for cls in (AsyncTaskRunEngine, SyncTaskRunEngine):
        assert _params(cls.call_task_fn) == ["transaction"]
        assert _params(cls.start) == ["task_run_id", "dependencies"]
        assert "transaction" in _params(cls.handle_success)
        for name in ("is_running", "wait_until_ready", "asset_context", "run_context",
                     "transaction_context", "state"):
            assert hasattr(cls, name), (cls, name)
    assert asyncio.iscoroutinefunction(AsyncTaskRunEngine.call_task_fn)
    for runner, call in ((run_task_async, "await engine.call_task_fn(txn)"),
                         (run_task_sync, "engine.call_task_fn(txn)")):
        source = inspect.getsource(runner)
        for step in ("engine.start(task_run_id=task_run_id, dependencies=dependencies)",
                     "engine.is_running()", "engine.wait_until_ready()",
                     "engine.asset_context()", "engine.run_context()",
                     "engine.transaction_context() as txn", call,
                     "raise_if_flow_run_suspension_requested()"):
            assert step in source, (runner.__name__, step)
    source = inspect.getsource(AsyncTaskRunEngine.call_task_fn)
    assert "transaction.is_committed()" in source and "handle_success" in source


def test_engine_with_body_calls_the_replacement():
    calls = []

    async def body(engine, parameters):
        calls.append(parameters)
        return "remote"

    engine_cls = _compat.engine_with_body(body)
    assert issubclass(engine_cls, AsyncTaskRunEngine)

    class Txn:
        def is_committed(self):
            return False

    engine = engine_cls.__new__(engine_cls)
    engine.parameters = {"x": 1}
    handled = []

    async def handle_success(result, transaction):
        handled.append(result)

    engine.handle_success = handle_success
    assert asyncio.run(engine.call_task_fn(Txn())) == "remote"
    assert calls == [{"x": 1}] and handled == ["remote"]


def test_context_models_rebuild():
    _compat.rebuild_context_models()
    with pytest.raises(Exception, match="task_runner|Field required"):
        FlowRunContext()  # fully defined: validation errors now, not "not fully defined"
