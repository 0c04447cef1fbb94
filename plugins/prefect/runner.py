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

Nested submission. A remote body that submits tasks (``my_task.submit()`` inside a task) finds
a flow run context whose task runner is a ``nested.NestedTaskRunner``: the nested tasks go
through the service to the same endpoint under the submitting runner's identity (the body is
given the runner's service URL and token with each call; ``nested_submission=False`` keeps the
token at home). Their Prefect engines run where the body runs, so that case needs the Prefect
API at the endpoint. A body waiting for tasks it submitted gives its Dask worker slot back
(``distributed.secede``) so that deep recursions do not deadlock.
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
from functools import partial
from typing import TYPE_CHECKING, Any, Self

from fedcompute import Client, ComputeFuture, Executor, OutputLine, serialize
from fedcompute.errors import SerializationError, TaskCancelled, TaskExecutionFailed
from prefect.client.schemas.objects import RunInput
from prefect.context import (
    AssetContext,
    AsyncClientContext,
    FlowRunContext,
    TagsContext,
    serialize_context,
)
from prefect.exceptions import UpstreamTaskError
from prefect.futures import PrefectConcurrentFuture, PrefectFuture, PrefectFutureList
from prefect.logging.loggers import get_run_logger
from prefect.states import State, exception_to_crashed_state
from prefect.task_engine import AsyncTaskRunEngine
from prefect.task_runners import TaskRunner
from prefect.utilities.callables import parameters_to_args_kwargs
from prefect.utilities.collections import visit_collection
from prefect.utilities.engine import collect_task_run_inputs_sync, resolve_inputs_sync

from . import _compat
from ._remote import EngineBody, Event, RemoteTaskError, TaskBody, current_scope
from ._remote import leave_worker_slot as _leave_worker_slot

if TYPE_CHECKING:
    from prefect.tasks import Task

__all__ = ["FederatedFuture", "FederatedTaskRunner"]


async def _call_body(engine: AsyncTaskRunEngine, parameters: dict[str, Any]) -> Any:
    return await engine.runner._call_remote(engine, parameters)  # type: ignore[attr-defined]


#: Prefect's async task engine, except that the function body runs on the endpoint.
_FederatedEngine = _compat.engine_with_body(_call_body)


async def _run_engine(runner: FederatedTaskRunner, task: Task, task_run_id: uuid.UUID,
                      parameters: dict[str, Any], wait_for: Iterable[PrefectFuture] | None,
                      dependencies: dict[str, set[RunInput]] | None,
                      context: dict[str, Any]) -> Any:
    """``prefect.task_engine.run_task_async`` with :data:`_FederatedEngine`; its final state.

    A body that raised ``KeyboardInterrupt``/``SystemExit`` on the endpoint crashes its task
    run (Prefect's engine records ``Crashed``), and the state comes back like any other: the
    exception never reaches the runner's event loop, whose thread it would end.
    """
    engine = _FederatedEngine(task=task, parameters=parameters, wait_for=wait_for,
                              context=context)
    engine.runner = runner
    try:
        return await _compat.run_engine(engine, task_run_id, dependencies)
    except asyncio.CancelledError:
        raise  # this runner cancelled it (interrupted flow, timeout): the run ended Crashed
    except BaseException:
        if engine.state is not None and engine.state.is_crashed():
            return engine.state
        raise


class _Escaped(Exception):
    """Carries a ``KeyboardInterrupt``/``SystemExit`` out of a loop task without it ending the
    loop (asyncio re-raises those two out of ``run_forever``)."""

    def __init__(self, exc: BaseException):
        super().__init__(repr(exc))
        self.exc = exc


async def _contained(coro: Coroutine) -> Any:
    try:
        return await coro
    except (KeyboardInterrupt, SystemExit) as exc:
        raise _Escaped(exc) from None


class FederatedFuture(PrefectConcurrentFuture):
    """A ``PrefectConcurrentFuture`` whose ``state``, once the run is over, is the final state
    the runner got with the result: never a lagging read from the Prefect API."""

    @property
    def state(self) -> State:
        if self.wrapped_future.done() and not self.wrapped_future.cancelled() \
                and self.wrapped_future.exception() is None:
            self.wait(0)
        return super().state


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
        fast_lane: let the endpoint run short tasks on its fast lane (executor processes on
            its workers, no Dask task each: less overhead per task). Off by default, as in
            prefect-dask every task is a Dask task (``distributed.get_worker()`` and
            ``worker_client()`` work inside it).
        stream_output: show each task body's output (print, stderr, logging) in the task
            run's logs while it runs, rather than all of it when it ends (default mode).
        nested_submission: give each remote body this runner's service URL and token, so that
            tasks it submits itself go through the service to the same endpoint. The token
            then reaches the endpoint (as task arguments, never in a pickled runner): turn it
            off for an endpoint whose owner you would not trust with it.

    Example::

        @flow(task_runner=FederatedTaskRunner(endpoint_id="..."))
        def pipeline(xs):
            return double.map(xs).result()
    """

    def __init__(self, endpoint_id: str, client: Client | None = None, *,
                 remote_engine: bool = False, resource_specification: dict | None = None,
                 remote_log_level: int | str = logging.INFO, batch_size: int = 2000,
                 nested_submission: bool = True, fast_lane: bool = False,
                 stream_output: bool = False):
        super().__init__()
        if not endpoint_id:
            raise ValueError("FederatedTaskRunner needs an endpoint_id")
        self.endpoint_id = str(endpoint_id)
        self.remote_engine = remote_engine
        self.resource_specification = resource_specification
        self.remote_log_level = _level(remote_log_level)
        self.batch_size = batch_size
        self.nested_submission = bool(nested_submission)
        self.fast_lane = bool(fast_lane)
        self.stream_output = bool(stream_output)
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
        self._nested: dict[str, Any] | None = None
        self._registered: set[int] = set()

    # --- configuration ---------------------------------------------------------------------

    def _config(self) -> dict[str, Any]:
        return {"endpoint_id": self.endpoint_id, "remote_engine": self.remote_engine,
                "resource_specification": self.resource_specification,
                "remote_log_level": self.remote_log_level, "batch_size": self.batch_size,
                "nested_submission": self.nested_submission, "fast_lane": self.fast_lane,
                "stream_output": self.stream_output}

    def _task_specification(self) -> dict | None:
        """The ``resource_specification`` every task carries (the fast-lane choice in it)."""
        if self.fast_lane:
            return self.resource_specification
        return {"fast_lane": False, **(self.resource_specification or {})}

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
            client = self._make_client()
            self._executor = Executor(self.endpoint_id, client=client,
                                      batch_size=self.batch_size,
                                      resource_specification=self._task_specification())
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
            self._client_ctx_context = self._submission_context()
            self._loop = loop
            try:
                self._spawn(self._open_prefect_client(), self._client_ctx_context).result()
            except BaseException:
                self._teardown()
                raise

    def _make_client(self) -> Client:
        """The fedcompute client: the one given, else (inside a remote body) the submitting
        runner's identity, else ``Client()`` from the environment or ``fedcompute login``."""
        if self._client is not None:
            return self._client
        scope = current_scope()
        if scope is not None:
            if scope.auth is None:
                raise RuntimeError(
                    "this task was submitted from inside a remote task run, but the runner of "
                    "that run has nested_submission=False: its token stays with the flow")
            self._own_client = Client(scope.auth["service_url"], scope.auth["token"])
        else:
            self._own_client = Client(self._service_url)
        return self._own_client

    def _submission_context(self) -> Context:
        """The contextvars a submitted task's engine runs in: the caller's."""
        return copy_context()

    def _auth(self) -> dict | None:
        """What a remote body needs to submit tasks itself (None: nested submission off)."""
        if not self.nested_submission or self._executor is None:
            return None
        client = self._executor.client
        return {"service_url": client.service_url, "token": client.token}

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
            # A KeyboardInterrupt/SystemExit escaping a task would end the loop's thread and
            # leave every future unresolved: contained, it only fails this one.
            task = loop.create_task(_contained(coro), context=context)
            self._loop_tasks[result] = task
            task.add_done_callback(partial(self._settle, result))

        loop.call_soon_threadsafe(start)
        return result

    def _settle(self, result: concurrent.futures.Future, task: asyncio.Task) -> None:
        self._loop_tasks.pop(result, None)
        if task.cancelled():
            result.set_exception(concurrent.futures.CancelledError())
        elif isinstance(task.exception(), _Escaped):
            result.set_exception(task.exception().exc)  # type: ignore[union-attr]
        elif task.exception() is not None:
            result.set_exception(task.exception())
        else:
            result.set_result(task.result())

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
            # The flow run may be ending (cancelled, a signal): the remote tasks still running
            # are stopped before this process goes, not left to run for nobody.
            self._executor.shutdown(wait=False, cancel_futures=True, cancel_timeout=10)
        if self._own_client is not None:
            self._own_client.close()
        if self._io_pool is not None:
            self._io_pool.shutdown(wait=False)
        self._reset()

    # --- submission ------------------------------------------------------------------------

    def submit(self, task: Task, parameters: dict[str, Any],
               wait_for: Iterable[PrefectFuture[Any]] | None = None,
               dependencies: dict[str, set[RunInput]] | None = None,
               ) -> FederatedFuture:
        """Submit a task run; its function body (or, with ``remote_engine``, its whole engine)
        runs on the endpoint. Returns at once with a :class:`FederatedFuture` (a
        ``PrefectConcurrentFuture``): registration and serialization happen on the runner's
        loop, never in the caller's thread."""
        if not self._started:
            raise RuntimeError("Task runner is not started")
        if task.isgenerator:
            raise NotImplementedError(
                f"Task {task.name!r} is a generator; FederatedTaskRunner runs functions only "
                "(a generator's items cannot stream back from the endpoint)")
        scope = current_scope()
        if scope is not None:
            # Submitted from inside a remote body: free its worker slot while it waits.
            _leave_worker_slot(scope)
        self._ensure_started()
        assert self._executor is not None

        context = self._submission_context()
        flow_run_ctx = context.run(FlowRunContext.get)
        if flow_run_ctx and flow_run_ctx.flow is not None:
            get_run_logger(flow_run_ctx).debug(
                f"Submitting task {task.name} to fedcompute endpoint {self.endpoint_id}...")
        else:
            self.logger.debug(f"Submitting task {task.name} to endpoint {self.endpoint_id}...")

        task_run_id = _compat.uuid7()
        # ``wait_for`` may be one future or a collection of them: kept as given, like Prefect.
        # Every engine on the loop shares the runner's Prefect client.
        _compat.share_async_client(context, self._client_ctx)
        if self.remote_engine:
            coro = self._run_engine_remotely(task, task_run_id, parameters, wait_for,
                                             dependencies)
        else:
            cancel_event = threading.Event()
            self._cancel_events[task_run_id] = cancel_event
            coro = self._run_locally(task, task_run_id, parameters, wait_for, dependencies,
                                     cancel_event)
        future = self._spawn(coro, context)
        with self._lock:
            self._inflight.add(future)
        future.add_done_callback(self._on_done)
        return FederatedFuture(task_run_id=task_run_id, wrapped_future=future)

    def map(self, task: Task, parameters: dict[str, Any],
            wait_for: Iterable[PrefectFuture[Any]] | None = None,
            ) -> PrefectFutureList[FederatedFuture]:
        """``Task.map``: one task run per item; the remote calls go out in batches."""
        return super().map(task, parameters, wait_for)

    def _on_done(self, future: concurrent.futures.Future) -> None:
        with self._lock:
            self._inflight.discard(future)

    async def _register(self, body: Callable) -> None:
        """Register ``body`` with the service once, off the loop (it is an HTTP call)."""
        if id(body) in self._registered:
            return
        assert self._executor is not None
        await asyncio.get_running_loop().run_in_executor(None, self._executor.register_function,
                                                         body)
        self._registered.add(id(body))

    def _nested_context(self) -> dict[str, Any] | None:
        """What a remote body needs to build a flow run context for tasks it submits: this
        runner's options and the flow run's serialized context (None outside a flow run).
        Computed once per runner (so once per flow run), in the first submitter's context."""
        if self._nested is None:
            if FlowRunContext.get() is None:
                return None
            serialized = None
            if self.nested_submission:
                serialized = serialize_context()
                # The parent task run of a nested task is the body's own (rebuilt remotely).
                serialized["task_run_context"] = {}
            # Without nested submission the body still gets a runner: one that says so.
            options = {k: v for k, v in self._config().items() if k != "endpoint_id"}
            self._nested = {"endpoint_id": self.endpoint_id, "options": options,
                            "context": serialized}
        return self._nested

    async def _task_body(self, fn: Callable) -> TaskBody:
        body = self._task_bodies.get(fn)
        if body is None:
            nested = self._nested_context()
            body = TaskBody(fn, nested)
            try:
                await self._register(body)
            except SerializationError as exc:
                if nested is None or nested["context"] is None:
                    raise
                # The flow run's context does not pickle (e.g. a flow holding a lock): run
                # bodies without it; tasks they submit fail with a clear error.
                self.logger.debug("flow run context not shipped: %s", exc)
                body = TaskBody(fn, {**nested, "context": None})
                await self._register(body)
            self._task_bodies[fn] = body
        return body

    async def _engine_body(self, task: Task) -> EngineBody:
        body = self._engine_bodies.get(task)
        if body is None:
            if self._serialized_context is None:
                # Like ProcessPoolTaskRunner: one snapshot of the flow run's context per runner.
                self._serialized_context = serialize_context()
            body = EngineBody(task, self._serialized_context)
            await self._register(body)
            self._engine_bodies[task] = body
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
            await self._task_body(task.fn)
            await self._wait_upstream(parameters, wait_for)
            return await _run_engine(self, task, task_run_id, parameters, wait_for,
                                     dependencies, {"cancel_event": cancel_event})
        finally:
            self._cancel_events.pop(task_run_id, None)

    async def _call_remote(self, engine: AsyncTaskRunEngine, parameters: dict[str, Any]) -> Any:
        """Run the task's function body on the endpoint; replay its output into the run's logs."""
        assert self._executor is not None
        task, task_run = engine.task, engine.task_run
        args, kwargs = parameters_to_args_kwargs(task.fn, parameters)
        tags_ctx = TagsContext.get()
        flow_run_ctx = FlowRunContext.get()
        meta = {
            "task_run_id": str(task_run.id), "task_run_name": task_run.name,
            "flow_run_id": str(task_run.flow_run_id) if task_run.flow_run_id else None,
            "flow_run_name": getattr(getattr(flow_run_ctx, "flow_run", None), "name", None),
            "task_name": task.name, "task_key": task_run.task_key,
            "task_tags": sorted(task.tags or ()), "task_version": task.version,
            "retries": task.retries,
            "dynamic_key": task_run.dynamic_key, "run_count": task_run.run_count,
            "tags": sorted(task_run.tags or ()),
            # What TagsContext holds around the body, as with ThreadPoolTaskRunner.
            "current_tags": sorted(tags_ctx.current_tags if tags_ctx else ()),
        }
        body = await self._task_body(task.fn)
        future = self._executor.submit_with(body, (meta, args, kwargs, self.remote_log_level,
                                                   self._auth()),
                                            stream_output=self.stream_output or None)
        if self.stream_output:
            future.add_output_callback(partial(_log_live, engine, self.remote_log_level))
        failure: RemoteTaskError | None = None
        try:
            value, events = await self._await_compute(future)
        except RemoteTaskError as exc:
            failure = exc
        if failure is None:
            _replay(engine, events, streamed=self.stream_output)
            return value
        _replay(engine, failure.events, streamed=self.stream_output)
        exc = serialize.unpack_exception(failure.envelope)
        if isinstance(exc, asyncio.CancelledError | GeneratorExit):
            # Would read as this coroutine being cancelled or closed: a plain failure instead.
            exc = TaskExecutionFailed(failure.envelope.get("type", "BaseException"),
                                      failure.envelope.get("message", ""),
                                      failure.envelope.get("traceback", ""))
        # A remote KeyboardInterrupt/SystemExit (any BaseException) crashes the task run, as
        # Prefect's engine does with one raised locally; _run_engine keeps it off the loop.
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

    async def _run_engine_remotely(self, task: Task, task_run_id: uuid.UUID,
                                   parameters: dict[str, Any],
                                   wait_for: Any,
                                   dependencies: dict[str, set[RunInput]] | None) -> Any:
        """``remote_engine=True``: resolve inputs here (futures cannot travel), then run
        Prefect's task engine on the endpoint; its final state comes back with the result."""
        assert self._executor is not None
        body = await self._engine_body(task)
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
        # A FederatedFuture's state is the one that came back with its result: the Prefect API
        # may not know it yet.
        states = visit_collection(
            wait_for, lambda x: x.state if isinstance(x, PrefectFuture) else x,
            return_data=True, max_depth=-1) if wait_for else None
        # The run's assets are worked out here, where the flow run knows its upstreams' (as
        # Prefect's process-pool runner does); the remote engine takes them over.
        assets = AssetContext.from_task_and_inputs(task, task_run_id, inputs,
                                                   copy_to_child_ctx=True).serialize()
        future = self._executor.submit_with(body, (task_run_id, resolved, states, inputs,
                                                   self._auth(), assets))
        try:
            return await self._await_compute(future)
        except (KeyboardInterrupt, SystemExit) as exc:
            # An endpoint whose engine let it through: the run crashed there.
            return await exception_to_crashed_state(exc)


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


def _log_live(engine: AsyncTaskRunEngine, lowest: int, line: OutputLine) -> None:
    """One line of a running body's live output (``stream_output``), as a record of the task
    run: stdout at INFO, stderr at WARNING, a logging record at its own level."""
    level = logging.INFO if line.stream == "stdout" else logging.WARNING
    if line.stream == "log":
        name, _, _rest = line.text.partition(" ")
        found = logging.getLevelName(name)
        level = found if isinstance(found, int) else logging.INFO
        if level < lowest:
            return
    engine.logger.log(level, "%s", line.text)


def _replay(engine: AsyncTaskRunEngine, events: list[Event], streamed: bool = False) -> None:
    """Log the remote body's output as records of the task run, with remote timestamps
    (``streamed``: it was logged live already, only the notice of what was dropped is left)."""
    adapter = engine.logger
    base: logging.Logger = getattr(adapter, "logger", adapter)
    extra = dict(getattr(adapter, "extra", None) or {})
    for kind, created, level, name, message in events:
        if not base.isEnabledFor(level):
            continue
        if streamed and not message.startswith("[fedcompute]"):
            continue
        record = base.makeRecord(name if kind == "log" else base.name, level, "(remote)", 0,
                                 message, None, None, extra=extra)
        record.created = created
        record.msecs = (created - int(created)) * 1000
        base.handle(record)
