"""``FederatedTaskRunner`` against Prefect's documented task-runner contract
(https://docs.prefect.io/v3/concepts/task-runners and the ``TaskRunner``/``PrefectFuture``
API reference), in both modes where the contract applies: the default (only the body runs on
the endpoint) and ``remote_engine=True`` (Prefect's whole engine runs there).

Real parts: Prefect's test server (ephemeral API), the fedcompute stack (service, Valkey,
endpoint with two single-threaded Dask workers). Written for this project from Prefect's
documentation; no Prefect test is copied.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from fedcompute.plugins.prefect import FederatedTaskRunner
from prefect import flow, task
from prefect.context import TagsContext, TaskRunContext, get_run_context, tags
from prefect.futures import PrefectFuture, as_completed, wait
from prefect.runtime import task_run as runtime_task_run
from prefect.states import State

from .conftest import read_task_runs, wait_until

pytestmark = pytest.mark.timeout(300)

MODES = ["default", "remote_engine"]


@pytest.fixture(params=MODES)
def mode(request) -> str:
    return request.param


@pytest.fixture
def make_runner(fed_stack, prefect_server):
    """A factory of runners on the stack's endpoint in the test's mode."""

    def make(mode: str, **options) -> FederatedTaskRunner:
        return FederatedTaskRunner(fed_stack.endpoint_id, client=fed_stack.client(),
                                   remote_engine=mode == "remote_engine", **options)

    return make


# --- task bodies -----------------------------------------------------------------------------


def _context_report(x):
    ctx = get_run_context()
    trc = TaskRunContext.get()
    return {"x": x, "context_type": type(ctx).__name__, "same": ctx is trc,
            "task_run_id": str(trc.task_run.id), "task_run_name": trc.task_run.name,
            "run_tags": sorted(trc.task_run.tags), "task_name": trc.task.name,
            "current_tags": sorted(TagsContext.get().current_tags),
            "parameters": dict(trc.parameters), "runtime_name": runtime_task_run.get_name()}


@task(tags=["from-task"])
def report(x):
    return _context_report(x)


@task(tags=["from-task"])
async def areport(x):
    await asyncio.sleep(0)
    return _context_report(x)


@task
def stamp(_: int = 0) -> float:
    return time.time()


@task
def sleeper(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@task
def fails():
    raise RuntimeError("upstream broke")


@task
def interrupted():
    raise KeyboardInterrupt


@task
def exits():
    raise SystemExit(3)


@task
def child(x):
    return {"x": x, "parent": None}


@task
def parent(x):
    future = child.submit(x + 1)
    assert isinstance(future, PrefectFuture)
    return future.result()["x"], str(TaskRunContext.get().task_run.id)


@task
def recurse(n):
    if n == 0:
        return 0
    return recurse.submit(n - 1).result() + 1


@task
def count_up(n):
    yield from range(n)


# --- the contract ----------------------------------------------------------------------------


def test_must_be_started_duplicates_and_compares(make_runner, mode):
    runner = make_runner(mode)
    with pytest.raises(RuntimeError, match="Task runner is not started"):
        runner.submit(stamp, {})
    twin = runner.duplicate()
    assert twin == runner and twin is not runner and isinstance(twin, FederatedTaskRunner)
    assert make_runner(mode, nested_submission=False) != runner


def test_submit_is_non_blocking_and_returns_prefect_futures(make_runner, mode):
    @flow(task_runner=make_runner(mode))
    def pipeline():
        sleeper.submit(0).result()  # warm up: the first submission starts the machinery
        started = time.monotonic()
        first = sleeper.submit(1.0)
        second = sleeper.submit(0.1, wait_for=[first])
        elapsed = time.monotonic() - started
        assert isinstance(first, PrefectFuture) and isinstance(first.task_run_id, uuid.UUID)
        return elapsed, first.result(), second.result()

    elapsed, a, b = pipeline()
    assert elapsed < 0.5 and (a, b) == (1.0, 0.1)


@pytest.mark.parametrize("body", [report, areport], ids=["sync", "async"])
def test_task_run_context_inside_the_body(make_runner, mode, body):
    """get_run_context(), TaskRunContext, task_run.name, tags and parameters, for submit and
    map, as the flow's process sees the same run."""

    @flow(task_runner=make_runner(mode))
    def pipeline():
        with tags("outer"):
            single = body.submit(1)
            mapped = body.map([2, 3])
        return single.result(), [m.result() for m in mapped], single.task_run_id

    state = pipeline(return_state=True)
    single, mapped, single_id = state.result()
    runs = {str(r.id): r for r in read_task_runs(state.state_details.flow_run_id)}
    for info in [single, *mapped]:
        run = runs[info["task_run_id"]]
        assert info["context_type"] == "TaskRunContext" and info["same"]
        assert info["task_run_name"] == run.name == info["runtime_name"]
        assert info["task_name"] == body.name
        assert info["run_tags"] == sorted(run.tags) == ["from-task", "outer"]
        assert "outer" in info["current_tags"]
        assert info["parameters"] == {"x": info["x"]}
    assert single["task_run_id"] == str(single_id)


def test_tags_without_a_flow(make_runner, mode):
    """The runner as a context manager (no flow), under ``tags(...)``."""
    with tags("tag1", "tag2"), make_runner(mode) as runner:
        future = runner.submit(report, {"x": 0})
        mapped = runner.map(report, {"x": [1, 2]})
        results = [future.result(), *[m.result() for m in mapped]]
    assert all(set(r["current_tags"]) >= {"tag1", "tag2"} for r in results)


def test_wait_for_and_data_dependencies_hand_on_final_states(make_runner, mode):
    """Downstream runs start after their upstreams and see them Completed, every time (the
    state handed on is the one that came back with the result, not a lagging API read)."""

    @flow(task_runner=make_runner(mode))
    def pipeline():
        out = []
        for _ in range(3):
            a = stamp.submit()
            b = stamp.submit()
            c = stamp.submit(wait_for=[a, b])
            d = stamp.submit(c)  # a data dependency
            out.append((a.result(), b.result(), c.result(), d.result(), c.state.name))
        return out

    for a, b, c, d, c_state in pipeline():
        assert c >= max(a, b) and d >= c and c_state == "Completed"


def test_upstream_failure_makes_downstream_not_ready(make_runner, mode):
    @flow(task_runner=make_runner(mode))
    def pipeline():
        bad = fails.submit()
        after = stamp.submit(wait_for=[bad])
        uses = stamp.submit(bad)
        after.wait()
        uses.wait()
        return bad.state, after.state, uses.state

    bad, after, uses = pipeline(return_state=True).result(raise_on_failure=False)
    assert bad.is_failed()
    assert after.name == uses.name == "NotReady" and after.is_pending()


@pytest.mark.parametrize("body", [interrupted, exits], ids=["KeyboardInterrupt", "SystemExit"])
def test_base_exception_in_a_task_crashes_it_and_the_flow_goes_on(make_runner, mode, body):
    @flow(task_runner=make_runner(mode))
    def pipeline():
        crashed = body.submit()
        crashed.wait(timeout=120)
        after = stamp.submit().result()  # the runner's loop is still alive
        return crashed.state, after

    started = time.monotonic()
    state = pipeline(return_state=True)
    crashed, after = state.result(raise_on_failure=False)
    assert isinstance(crashed, State) and crashed.is_crashed(), crashed
    assert after > 0 and time.monotonic() - started < 200


def test_nested_submission_through_the_same_runner(make_runner, mode):
    @flow(task_runner=make_runner(mode))
    def pipeline():
        return parent.submit(1).result()

    state = pipeline(return_state=True)
    value, parent_id = state.result()
    assert value == 2
    runs = read_task_runs(state.state_details.flow_run_id)
    (child_run,) = [r for r in runs if r.name.startswith("child")]
    parents = {str(i.id) for i in child_run.task_inputs.get("__parents__", [])}
    assert parents == {parent_id}
    wait_until(lambda: all(r.state and r.state.is_completed()
                           for r in read_task_runs(state.state_details.flow_run_id)))


def test_recursive_submission_deeper_than_the_endpoint_has_slots(make_runner, mode):
    """Each level waits for the next; the endpoint has two worker slots. A waiting level
    gives its slot back, so this does not deadlock."""

    @flow(task_runner=make_runner(mode))
    def pipeline():
        return recurse.submit(5).result()

    assert pipeline() == 5


def test_nested_submission_can_be_turned_off(make_runner):
    @flow(task_runner=make_runner("default", nested_submission=False))
    def pipeline():
        return parent.submit(1).result()

    with pytest.raises(RuntimeError, match="nested_submission=False"):
        pipeline()


def test_as_completed_and_wait(make_runner, mode):
    @flow(task_runner=make_runner(mode))
    def pipeline():
        futures = [sleeper.submit(s) for s in (2.0, 0.2)]
        order = [f.result() for f in as_completed(futures)]
        done, not_done = wait([sleeper.submit(0.1)], timeout=120)
        return order, len(done), len(not_done)

    assert pipeline() == ([0.2, 2.0], 1, 0)


def test_generator_tasks_are_refused_at_submission(make_runner):
    @flow(task_runner=make_runner("default"))
    def pipeline():
        count_up.submit(3)

    with pytest.raises(NotImplementedError, match="generator"):
        pipeline()


def test_asset_materialization_events_reach_the_api(make_runner, mode):
    """``@materialize`` tasks: each materialization, and the upstream asset its consumer
    references, are events of the flow run (the upstream's assets are known downstream)."""
    from prefect.assets import Asset, materialize
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter

    raw = Asset(key=f"file://fed/{uuid.uuid4().hex}/raw")
    done = Asset(key=f"file://fed/{uuid.uuid4().hex}/done")

    @materialize(raw)
    def extract():
        return 1

    @materialize(done)
    def load(x):
        return x + 1

    @flow(task_runner=make_runner(mode))
    def pipeline():
        load.submit(extract.submit()).wait()
        return get_run_context().flow_run.id

    flow_run_id = pipeline()

    def events():
        with get_client(sync_client=True) as client:
            page = client.read_events(EventFilter(
                event=EventNameFilter(prefix=["prefect.asset."]),
                related=EventRelatedFilter(id=[f"prefect.flow-run.{flow_run_id}"])), limit=50)
        found = {(e.event, e.resource.id) for e in page.events}
        return found if len(found) >= 3 else None

    assert wait_until(events, timeout=60) == {
        ("prefect.asset.materialization.succeeded", raw.key),
        ("prefect.asset.referenced", raw.key),
        ("prefect.asset.materialization.succeeded", done.key)}
