"""Helpers of the fault, load and security tests: private stacks, a countable task, and the
checks that every task ended exactly once and none was lost.

Each fault test runs its own :class:`~fedcompute.testing.LocalStack` (never the session's
``fed_stack``), because it kills parts of it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import redis
from fedcompute import Client, ComputeFuture
from fedcompute.testing import LocalStack


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something true; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@contextlib.contextmanager
def running_stack(home: Path, *, env: dict | None = None, workers: int = 2,
                  endpoint: bool = True, **endpoint_config: Any) -> Iterator[LocalStack]:
    """A private stack (service + user ``alice`` + optionally endpoint ``local``), torn down
    whatever the test did to it (stopped processes are continued so they can be ended)."""
    stack = LocalStack(home, workers=workers, env={k: str(v) for k, v in (env or {}).items()})
    try:
        stack.start_service()
        stack.token = stack.create_user("alice")
        if endpoint:
            stack.endpoint_id = stack.start_endpoint("local", **endpoint_config)
        yield stack
    finally:
        for proc in list(stack.endpoints.values()):
            resume_tree(proc.pid)
        stack.down()


def process_tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def resume_tree(pid: int) -> None:
    for proc in process_tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGCONT)


def kill_pids(pids: list[int]) -> None:
    """SIGKILL these processes and wait until they are gone."""
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc = psutil.Process(pid)
            proc.kill()
            procs.append(proc)
    psutil.wait_procs(procs, timeout=30)


def service_rss(stack: LocalStack) -> int:
    """Resident memory of every process of the service (supervisor, gunicorn, RQ, Valkey)."""
    return sum(p.memory_info().rss for p in process_tree(stack.service.pid)
               if _alive(p))


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def service_redis(stack: LocalStack) -> redis.Redis:
    """A connection to the stack's embedded Valkey (URL and password from its state file)."""
    state = json.loads((stack.home / "service" / "service.json").read_text())
    return redis.Redis.from_url(state["redis_url"])


# --- the task ---------------------------------------------------------------------------


def work(i: int, ms: float = 2.0, log_dir: str | None = None) -> int:
    """Sleep ``ms``, return ``2 * i``; each execution appends ``i`` to a per-process log so the
    tests can count how often a task really ran (at-least-once, not at-most-once)."""
    import os
    import time

    if log_dir:
        with open(os.path.join(log_dir, f"{os.getpid()}.log"), "a") as f:
            f.write(f"{i}\n")
    if ms:
        time.sleep(ms / 1000)
    return 2 * i


def executions(log_dir: Path) -> Counter:
    """How many times each task index was executed (from :func:`work`'s logs)."""
    runs: Counter = Counter()
    for path in Path(log_dir).glob("*.log"):
        runs.update(int(line) for line in path.read_text().split())
    return runs


# --- checks ---------------------------------------------------------------------------


def result_stream(client: Client, group: str) -> Counter:
    """How many times each task id appears in its group's result stream (the SDK's view of
    "this task finished"): exactly once is the contract."""
    seen: Counter = Counter()
    cursor = "0"
    while True:
        page = client.results_page(group, cursor, wait=0, limit=5000)
        if not page["results"]:
            return seen
        seen.update(r["task_id"] for r in page["results"])
        cursor = page["cursor"]


def collect(futures: list[ComputeFuture], timeout: float) -> dict[str, tuple[bool, Any]]:
    """Wait for every future; ``task_id -> (ok, result or exception)``. Fails naming the
    unfinished tasks if some never end."""
    done, pending = concurrent.futures.wait(futures, timeout=timeout)
    assert not pending, (f"{len(pending)} of {len(futures)} tasks never finished, e.g. "
                         f"{[f.task_id for f in list(pending)[:5]]}")
    out = {}
    for f in futures:
        exc = f.exception()
        out[f.task_id] = (exc is None, f.result() if exc is None else exc)
    return out


def assert_exactly_once(client: Client, group: str, futures: list[ComputeFuture],
                        expected: dict[str, Any], timeout: float = 300.0) -> dict[str, Any]:
    """Every future resolves, to the right value; each task is in the group's result stream
    exactly once; no task of the group is unfinished. Returns figures for the report."""
    started = time.monotonic()
    outcomes = collect(futures, timeout)
    failed = {tid: value for tid, (ok, value) in outcomes.items() if not ok}
    assert not failed, f"{len(failed)} tasks failed, e.g. {list(failed.items())[:3]}"
    wrong = [tid for tid, (_, value) in outcomes.items() if value != expected[tid]]
    assert not wrong, f"{len(wrong)} wrong results, e.g. {wrong[:3]}"
    stream = result_stream(client, group)
    missing = set(expected) - set(stream)
    repeated = {tid: n for tid, n in stream.items() if n != 1}
    assert not missing, f"{len(missing)} tasks missing from the result stream"
    assert not repeated, f"tasks finished more than once: {list(repeated.items())[:5]}"
    assert set(stream) == set(expected), "unexpected tasks in the result stream"
    return {"tasks": len(futures), "lost": len(missing), "finished_twice": len(repeated),
            "collect_s": round(time.monotonic() - started, 1)}


def report(name: str, **figures: Any) -> None:
    """One line of the fault/load table (run pytest with ``-s`` to see it)."""
    print(f"\nRELIABILITY {name}: " + json.dumps(figures, sort_keys=True), flush=True)
    path = os.environ.get("FEDCOMPUTE_RELIABILITY_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"name": name, **figures}) + "\n")
