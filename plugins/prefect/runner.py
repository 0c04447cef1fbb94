"""``FederatedTaskRunner``: a Prefect 3 task runner whose tasks run on a fedcompute endpoint.

How it works (default mode). Prefect's task engine stays in the flow's process: task runs,
states, retries, caching, result persistence, timeouts and hooks are all Prefect's own code,
talking to the Prefect API from where the flow runs. Only the task's function body crosses to
the endpoint, through one ``fedcompute.Executor`` per runner (batched submissions, one result
long-poll). The endpoint never needs to reach the Prefect API.

Bounded threads. Every submitted task runs Prefect's *async* engine as a coroutine on one event
loop thread owned by the runner, whatever the task's flavour (sync or async): waiting for
upstream futures and for the remote result is an ``await`` on a future resolved by the
Executor's result thread, so 1,000 in-flight remote tasks hold no thread each. The threads are:
this loop, the Executor's submit and result threads, and Prefect's own service threads.

``remote_engine=True`` runs the whole Prefect engine on the endpoint instead (like
prefect-dask's workers do); the endpoint must then reach the Prefect API.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import uuid
import weakref
from collections.abc import Callable, Coroutine, Iterable
from contextvars import Context, copy_context
from typing import TYPE_CHECKING, Any, Self

from fedcompute import Client, ComputeFuture, Executor, serialize
from fedcompute.errors import TaskCancelled, TaskExecutionFailed
from prefect._internal.uuid7 import uuid7
from prefect.client.schemas.objects import RunInput
from prefect.context import AsyncClientContext, FlowRunContext, serialize_context
from prefect.exceptions import UpstreamTaskError
from prefect.futures import PrefectConcurrentFuture, PrefectFuture, PrefectFutureList
from prefect.logging.loggers import get_run_logger
from prefect.task_engine import AsyncTaskRunEngine
from prefect.task_runners import TaskRunner
from prefect.utilities.callables import parameters_to_args_kwargs
from prefect.utilities.collections import visit_collection
from prefect.utilities.engine import collect_task_run_inputs_sync, resolve_inputs_sync

from ._remote import EngineBody, Event, RemoteTaskError, TaskBody

if TYPE_CHECKING:
    from prefect.tasks import Task

__all__ = ["FederatedTaskRunner"]


class _FederatedEngine(AsyncTaskRunEngine):
    """Prefect's async task engine, except that the function body runs on the endpoint."""

    runner: FederatedTaskRunner

    async def call_task_fn(self, transaction: Any) -> Any:
        # Same as AsyncTaskRunEngine.call_task_fn, with the body's call replaced.
        parameters = self.parameters or {}
        if transaction.is_committed():
            result = await transaction.read()
        else:
            result = await self.runner._call_remote(self, parameters)
        await self.handle_success(result, transaction=transaction)
        return result


async def _run_engine(runner: FederatedTaskRunner, task: Task, task_run_id: uuid.UUID,
                      parameters: dict[str, Any], wait_for: Iterable[PrefectFuture] | None,
                      dependencies: dict[str, set[RunInput]] | None,
                      context: dict[str, Any]) -> Any:
    """``prefect.task_engine.run_task_async`` with :class:`_FederatedEngine`."""
    from prefect._flow_run_suspension import raise_if_flow_run_suspension_requested

    engine = _FederatedEngine(task=task, parameters=parameters, wait_for=wait_for,
                              context=context)
    engine.runner = runner
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


def _level(level: int | str) -> int:
    if isinstance(level, str):
        try:
            return logging.getLevelNamesMapping()[level.upper()]
        except KeyError:
            raise ValueError(f"unknown logging level {level!r}") from None
    return int(level)


def _futures_in(expr: Any) -> list[PrefectFuture]:
    """Every Prefect future inside ``expr`` (parameters may nest them in collections)."""
    found: list[PrefectFuture] = []

    def visit(item: Any) -> Any:
        if isinstance(item, PrefectFuture):
            found.append(item)
        return item

    visit_collection(expr, visit_fn=visit, return_data=False, max_depth=-1)
    return found


class FederatedTaskRunner(TaskRunner[PrefectConcurrentFuture[Any]]):
    """Run a flow's tasks on a fedcompute endpoint.

    Args:
        endpoint_id: the endpoint that runs the task bodies.
        client: a ``fedcompute.Client``; by default ``Client()`` (environment variables
            ``FEDCOMPUTE_SERVICE_URL``/``FEDCOMPUTE_TOKEN`` or ``fedcompute login``).
        remote_engine: run Prefect's whole task engine on the endpoint (it must reach the
            Prefect API) instead of only the function body.
        resource_specification: passed to the endpoint with every task (e.g. cores, walltime).
        remote_log_level: lowest level of remote ``logging`` records sent to the task run's logs.
        batch_size: most tasks per submission request.

    Example::

        @flow(task_runner=FederatedTaskRunner(endpoint_id="..."))
        def pipeline(xs):
            return double.map(xs).result()
    """

    def __init__(self, endpoint_id: str, client: Client | None = None, *,
                 remote_engine: bool = False, resource_specification: dict | None = None,
                 remote_log_level: int | str = logging.INFO, batch_size: int = 2000):
        super().__init__()
        if not endpoint_id:
            raise ValueError("FederatedTaskRunner needs an endpoint_id")
        self.endpoint_id = str(endpoint_id)
        self.remote_engine = remote_engine
        self.resource_specification = resource_specification
        self.remote_log_level = _level(remote_log_level)
        self.batch_size = batch_size
        self._client = client
        self._service_url = client.service_url if client is not None else None
        self._reset()

    def _reset(self) -> None:
        """Forget everything that belongs to one started lifetime (threads, loop, executor)."""
        self._lock = threading.Lock()
        self._executor: Executor | None = None
        self._own_client: Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._io_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._client_ctx: AsyncClientContext | None = None
        self._client_ctx_context: Context | None = None
        self._inflight: set[concurrent.futures.Future] = set()
        self._loop_tasks: dict[concurrent.futures.Future, asyncio.Task] = {}
        self._cancel_events: dict[uuid.UUID, threading.Event] = {}
        self._task_bodies: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._engine_bodies: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._serialized_context: dict[str, Any] | None = None

    # --- configuration ---------------------------------------------------------------------

    def _config(self) -> dict[str, Any]:
        return {"endpoint_id": self.endpoint_id, "remote_engine": self.remote_engine,
                "resource_specification": self.resource_specification,
                "remote_log_level": self.remote_log_level, "batch_size": self.batch_size}

    def duplicate(self) -> Self:
        """A new, unstarted runner with the same configuration and client."""
        twin = type(self)(client=self._client, **self._config())
        twin._service_url = self._service_url
        return twin

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, FederatedTaskRunner) and self._config() == other._config()
                and self._service_url == other._service_url)

    def __hash__(self) -> int:
        return hash((type(self), self.endpoint_id, self.remote_engine))

    def __repr__(self) -> str:
        mode = ", remote_engine=True" if self.remote_engine else ""
        return f"FederatedTaskRunner(endpoint_id={self.endpoint_id!r}{mode})"

    def __getstate__(self) -> dict[str, Any]:
        # The flow (and so its runner) is pickled into Prefect's serialized context. Keep only
        # configuration: no threads, loop or sockets, and no token (a pickled flow context may
        # travel to an endpoint); the unpickled runner authenticates as its process would.
        return {"config": self._config(), "service_url": self._service_url}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state["config"])  # type: ignore[misc]
        self._service_url = state["service_url"]

    # --- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> Self:
        # Nothing is started here: Prefect enters runners it may never use (e.g. when a flow
        # context is hydrated in another process); the first submit starts the machinery.
        super().__enter__()
        return self

    def _ensure_started(self) -> None:
        if self._loop is not None:
            return
        with self._lock:
            if self._loop is not None:
                return
            client = self._client
            if client is None:
                client = self._own_client = Client(self._service_url)
            self._executor = Executor(self.endpoint_id, client=client,
                                      batch_size=self.batch_size,
                                      resource_specification=self.resource_specification)
            loop = asyncio.new_event_loop()
            # Bounded pool for the few blocking calls made from the loop (remote cancels,
            # waiting on futures of other runners).
            self._io_pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=4, thread_name_prefix="fedcompute-prefect-io")
            loop.set_default_executor(self._io_pool)
            self._thread = threading.Thread(target=loop.run_forever, daemon=True,
                                            name="fedcompute-prefect-loop")
            self._thread.start()
            # One Prefect client for every task engine on this loop (AsyncClientContext reuses a
            # context whose client belongs to the running loop), opened in the caller's
            # contextvars so that it sees the caller's Prefect settings.
            self._client_ctx_context = copy_context()
            self._loop = loop
            try:
                self._spawn(self._open_prefect_client(), self._client_ctx_context).result()
            except BaseException:
                self._teardown()
                raise

    async def _open_prefect_client(self) -> None:
        ctx = AsyncClientContext()
        await ctx.__aenter__()
        self._client_ctx = ctx

    async def _close_prefect_client(self) -> None:
        if self._client_ctx is not None:
            await self._client_ctx.__aexit__(None, None, None)
            self._client_ctx = None

    def _spawn(self, coro: Coroutine, context: Context) -> concurrent.futures.Future:
        """Run ``coro`` as a task of the runner's loop in ``context``; a thread-safe future."""
        result: concurrent.futures.Future = concurrent.futures.Future()
        loop = self._loop
        assert loop is not None

        def start() -> None:
            if not result.set_running_or_notify_cancel():
                coro.close()
                return
            task = loop.create_task(coro, context=context)
            self._loop_tasks[result] = task

            def settle(t: asyncio.Task) -> None:
                self._loop_tasks.pop(result, None)
                if t.cancelled():
                    result.set_exception(concurrent.futures.CancelledError())
                elif t.exception() is not None:
                    result.set_exception(t.exception())
                else:
                    result.set_result(t.result())

            task.add_done_callback(settle)

        loop.call_soon_threadsafe(start)
        return result

    def cancel_all(self) -> None:
        """Ask every task of this runner not yet running its body to stop (Prefect calls this
        when a flow run is cancelled)."""
        for event in list(self._cancel_events.values()):
            event.set()

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        try:
            if self._loop is not None:
                if exc_type is not None:
                    self.cancel_all()
                if exc_type is not None and not issubclass(exc_type, Exception):
                    # Ctrl-C, SystemExit, a termination signal: do not wait for remote work
                    # (it may take hours). Interrupted task runs end Crashed; remote tasks not
                    # started yet are withdrawn.
                    self._crash_inflight()
                # Otherwise, like ThreadPoolTaskRunner: submitted tasks run to completion.
                concurrent.futures.wait(list(self._inflight))
        finally:
            self._teardown()
            super().__exit__(exc_type, exc_value, traceback)

    def _crash_inflight(self) -> None:
        loop = self._loop
        assert loop is not None
        for task in list(self._loop_tasks.values()):
            loop.call_soon_threadsafe(task.cancel)
        concurrent.futures.wait(list(self._inflight), timeout=60)

    def _teardown(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            if self._client_ctx is not None and self._client_ctx_context is not None:
                try:
                    self._spawn(self._close_prefect_client(),
                                self._client_ctx_context).result(timeout=30)
                except Exception:  # noqa: BLE001 - closing a client must not mask the flow's outcome
                    self.logger.debug("closing the Prefect client failed", exc_info=True)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)
        if loop is not None and not loop.is_running():
            loop.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self._own_client is not None:
            self._own_client.close()
        if self._io_pool is not None:
            self._io_pool.shutdown(wait=False)
        self._reset()

    # --- submission ------------------------------------------------------------------------

    def submit(self, task: Task, parameters: dict[str, Any],
               wait_for: Iterable[PrefectFuture[Any]] | None = None,
               dependencies: dict[str, set[RunInput]] | None = None,
               ) -> PrefectConcurrentFuture[Any]:
        """Submit a task run; its function body (or, with ``remote_engine``, its whole engine)
        runs on the endpoint. Returns at once with a ``PrefectConcurrentFuture``."""
        if not self._started:
            raise RuntimeError("Task runner is not started")
        if task.isgenerator:
            raise NotImplementedError(
                f"Task {task.name!r} is a generator; FederatedTaskRunner runs functions only")
        self._ensure_started()
        assert self._executor is not None

        flow_run_ctx = FlowRunContext.get()
        if flow_run_ctx:
            get_run_logger(flow_run_ctx).debug(
                f"Submitting task {task.name} to fedcompute endpoint {self.endpoint_id}...")
        else:
            self.logger.debug(f"Submitting task {task.name} to endpoint {self.endpoint_id}...")

        task_run_id = uuid7()
        # ``wait_for`` may be one future or a collection of them: kept as given, like Prefect.
        context = copy_context()
        # Every engine on the loop shares the runner's Prefect client.
        context.run(AsyncClientContext.__var__.set, self._client_ctx)
        if self.remote_engine:
            body = self._engine_body(task)
            coro = self._run_engine_remotely(task, body, task_run_id, parameters, wait_for,
                                             dependencies)
        else:
            # Register the body here, in the caller's thread: the first time it is an HTTP call,
            # which must not stall the loop.
            self._executor.register_function(self._task_body(task.fn))
            cancel_event = threading.Event()
            self._cancel_events[task_run_id] = cancel_event
            coro = self._run_locally(task, task_run_id, parameters, wait_for, dependencies,
                                     cancel_event)
        future = self._spawn(coro, context)
        with self._lock:
            self._inflight.add(future)
        future.add_done_callback(self._on_done)
        return PrefectConcurrentFuture(task_run_id=task_run_id, wrapped_future=future)

    def map(self, task: Task, parameters: dict[str, Any],
            wait_for: Iterable[PrefectFuture[Any]] | None = None,
            ) -> PrefectFutureList[PrefectConcurrentFuture[Any]]:
        """``Task.map``: one task run per item; the remote calls go out in batches."""
        return super().map(task, parameters, wait_for)

    def _on_done(self, future: concurrent.futures.Future) -> None:
        with self._lock:
            self._inflight.discard(future)

    def _task_body(self, fn: Callable) -> TaskBody:
        body = self._task_bodies.get(fn)
        if body is None:
            body = self._task_bodies[fn] = TaskBody(fn)
        return body

    def _engine_body(self, task: Task) -> EngineBody:
        body = self._engine_bodies.get(task)
        if body is None:
            if self._serialized_context is None:
                # Like ProcessPoolTaskRunner: one snapshot of the flow run's context per runner.
                self._serialized_context = serialize_context()
            body = self._engine_bodies[task] = EngineBody(task, self._serialized_context)
            assert self._executor is not None
            self._executor.register_function(body)
        return body

    # --- on the loop ------------------------------------------------------------------------

    async def _wait_upstream(self, parameters: dict[str, Any],
                             wait_for: Any) -> None:
        """Wait, without holding a thread, until every upstream future is done: then Prefect's
        engine resolves them without blocking the loop (or marks this run NotReady)."""
        loop = asyncio.get_running_loop()
        for future in _futures_in(parameters) + _futures_in(wait_for):
            if isinstance(future, PrefectConcurrentFuture):
                await _wrap(future.wrapped_future, loop)
            else:  # another runner's future: its wait() may block
                await loop.run_in_executor(None, future.wait)

    async def _run_locally(self, task: Task, task_run_id: uuid.UUID,
                           parameters: dict[str, Any], wait_for: Any,
                           dependencies: dict[str, set[RunInput]] | None,
                           cancel_event: threading.Event) -> Any:
        try:
            await self._wait_upstream(parameters, wait_for)
            return await _run_engine(self, task, task_run_id, parameters, wait_for,
                                     dependencies, {"cancel_event": cancel_event})
        finally:
            self._cancel_events.pop(task_run_id, None)

    async def _call_remote(self, engine: _FederatedEngine, parameters: dict[str, Any]) -> Any:
        """Run the task's function body on the endpoint; replay its output into the run's logs."""
        assert self._executor is not None
        task, task_run = engine.task, engine.task_run
        args, kwargs = parameters_to_args_kwargs(task.fn, parameters)
        meta = {
            "task_run_id": str(task_run.id), "task_run_name": task_run.name,
            "flow_run_id": str(task_run.flow_run_id) if task_run.flow_run_id else None,
            "task_name": task.name, "task_key": task_run.task_key,
            "dynamic_key": task_run.dynamic_key, "run_count": task_run.run_count,
            "tags": sorted(task_run.tags or ()),
        }
        future = self._executor.submit_with(self._task_body(task.fn),
                                            (meta, args, kwargs, self.remote_log_level))
        failure: RemoteTaskError | None = None
        try:
            value, events = await self._await_compute(future)
        except RemoteTaskError as exc:
            failure = exc
        if failure is None:
            _replay(engine, events)
            return value
        _replay(engine, failure.events)
        exc = serialize.unpack_exception(failure.envelope)
        if not isinstance(exc, Exception):
            # SystemExit/KeyboardInterrupt of the *remote* body: a failure of this task, not a
            # reason to stop the flow's process (asyncio would re-raise it out of the loop).
            exc = TaskExecutionFailed(failure.envelope.get("type", "BaseException"),
                                      failure.envelope.get("message", ""),
                                      failure.envelope.get("traceback", ""))
        raise exc

    async def _await_compute(self, future: ComputeFuture) -> Any:
        loop = asyncio.get_running_loop()
        try:
            await _wrap(future, loop)
        except asyncio.CancelledError:
            # A timeout or a cancelled flow: withdraw the remote task if it has not started.
            # ComputeFuture.cancel may call the service, so not on the loop.
            if not future.done():
                loop.run_in_executor(None, future.cancel)
            raise
        if future.cancelled():
            raise TaskCancelled(f"fedcompute task {future.task_id} was cancelled")
        return future.result()

    async def _run_engine_remotely(self, task: Task, body: EngineBody, task_run_id: uuid.UUID,
                                   parameters: dict[str, Any],
                                   wait_for: Any,
                                   dependencies: dict[str, set[RunInput]] | None) -> Any:
        """``remote_engine=True``: resolve inputs here (futures cannot travel), then run
        ``run_task_sync``/``run_task_async`` on the endpoint; its final state comes back."""
        assert self._executor is not None
        await self._wait_upstream(parameters, wait_for)
        # Upstream links must be collected before the futures are replaced by their values.
        inputs = {k: collect_task_run_inputs_sync(v) for k, v in parameters.items()}
        for key, extra in (dependencies or {}).items():
            inputs[key] = inputs.get(key, set()) | extra
        try:
            resolved = resolve_inputs_sync(parameters, return_data=True, max_depth=-1)
        except UpstreamTaskError:
            # An upstream failed: let the local engine record this run as NotReady, exactly as
            # the default mode does (no need to go remote for that).
            return await _run_engine(self, task, task_run_id, parameters, wait_for,
                                     dependencies, {})
        # Futures cannot travel; their final states can (the engine reads them the same way).
        states = visit_collection(
            wait_for, lambda x: x.state if isinstance(x, PrefectFuture) else x,
            return_data=True, max_depth=-1) if wait_for else None
        future = self._executor.submit_with(body, (task_run_id, resolved, states, inputs))
        return await self._await_compute(future)


async def _wrap(future: concurrent.futures.Future, loop: asyncio.AbstractEventLoop) -> None:
    """Wait for a thread-world future from the loop (no thread held; no cancel propagation)."""
    if future.done():
        return
    waiter = loop.create_future()

    def wake(_: concurrent.futures.Future) -> None:
        try:
            loop.call_soon_threadsafe(_settle, waiter)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    future.add_done_callback(wake)
    await waiter


def _settle(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _replay(engine: AsyncTaskRunEngine, events: list[Event]) -> None:
    """Log the remote body's output as records of the task run, with remote timestamps."""
    adapter = engine.logger
    base: logging.Logger = getattr(adapter, "logger", adapter)
    extra = dict(getattr(adapter, "extra", None) or {})
    for kind, created, level, name, message in events:
        if not base.isEnabledFor(level):
            continue
        record = base.makeRecord(name if kind == "log" else base.name, level, "(remote)", 0,
                                 message, None, None, extra=extra)
        record.created = created
        record.msecs = (created - int(created)) * 1000
        base.handle(record)
