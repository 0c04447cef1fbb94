"""Fixtures for the Prefect adapter: one Prefect test server (``prefect_test_harness``) for the
session, next to the real fedcompute stack (``fed_stack``), plus helpers that read task runs and
their logs back through the Prefect API."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

import pytest

# Before Prefect is imported: its settings are read once, at import.
_PREFECT_HOME = tempfile.mkdtemp(prefix="fedcompute-prefect-home-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_TO_API_BATCH_INTERVAL", "0.3")

from fedcompute.plugins.prefect import FederatedTaskRunner  # noqa: E402
from prefect.client.orchestration import get_client  # noqa: E402
from prefect.client.schemas.filters import (  # noqa: E402
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterTaskRunId,
)
from prefect.client.schemas.objects import Log, TaskRun  # noqa: E402
from prefect.client.schemas.sorting import LogSort, TaskRunSort  # noqa: E402


@pytest.fixture(scope="session")
def prefect_server():
    """A temporary Prefect server (SQLite) for the whole session; ~10 s to start."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield
    shutil.rmtree(_PREFECT_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def endpoint_id(fed_stack, prefect_server) -> str:
    return fed_stack.endpoint_id


@pytest.fixture
def runner(fed_stack, prefect_server) -> FederatedTaskRunner:
    """A runner on the stack's endpoint (a fresh one per test: flows duplicate it anyway)."""
    return FederatedTaskRunner(fed_stack.endpoint_id, client=fed_stack.client())


def wait_until(check: Callable[[], Any], timeout: float = 120.0, interval: float = 0.3) -> Any:
    """Poll ``check`` until it returns something truthy (the API learns states from events,
    asynchronously); return that, or fail with the last value."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met in {timeout}s; last value: {value!r}")


def read_task_runs(flow_run_id: UUID) -> list[TaskRun]:
    """All task runs of a flow run, from the Prefect API (paged: the API returns 200 at most)."""
    runs: list[TaskRun] = []
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                sort=TaskRunSort.ID_DESC, limit=200, offset=len(runs))
            runs.extend(page)
            if len(page) < 200:
                return runs


def read_task_state(task_run_id: UUID) -> str | None:
    """The name of a task run's current state in the API (None before the API knows it)."""
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            run = client.read_task_run(task_run_id)
        except ObjectNotFound:
            return None
    return run.state.name if run.state else None


def task_runs(flow_run_id: UUID, expected: dict[str, str] | None = None, count: int | None = None,
              timeout: float = 120.0) -> dict[str, TaskRun]:
    """Task runs of a flow run by name once they match ``expected`` ({task run name prefix:
    state name}); with ``count``, once that many runs exist and all are final."""

    def check() -> dict[str, TaskRun] | None:
        runs = read_task_runs(flow_run_id)
        if count is not None:
            done = [r for r in runs if r.state and (r.state.is_final() or r.state.name == "NotReady")]
            return {r.name: r for r in runs} if len(runs) == count == len(done) else None
        by_name = {r.name: r for r in runs}
        for prefix, state_name in (expected or {}).items():
            matches = [r for n, r in by_name.items() if n.startswith(prefix)]
            if not matches or any(r.state is None or r.state.name != state_name for r in matches):
                return None
        return by_name

    return wait_until(check, timeout)


def task_run_logs(task_run_id: UUID, must_contain: list[str], timeout: float = 60.0) -> list[Log]:
    """A task run's logs, once every string of ``must_contain`` appears in one of them."""

    def check() -> list[Log] | None:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(
                log_filter=LogFilter(task_run_id=LogFilterTaskRunId(any_=[task_run_id])),
                sort=LogSort.TIMESTAMP_ASC, limit=200, offset=0)
        text = "\n".join(log.message for log in logs)
        return logs if all(s in text for s in must_contain) else None

    return wait_until(check, timeout)
