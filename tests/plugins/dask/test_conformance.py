"""Dask's documented futures API (https://distributed.dask.org/en/stable/api.html and the
"Futures" and "Coordination primitives" pages), each call as the documentation shows it, through
``Client(FederatedCluster(...))`` on the real stack: the client reaches the endpoint's scheduler
only through the service's relay.

Written for this project from Dask's documentation; no Dask test is copied.
"""

from __future__ import annotations

import threading
import time

import dask
import dask.array as da
import dask.bag as db
import dask.dataframe as dd
import httpx
import numpy as np
import pandas as pd
import pytest
from distributed import (
    Client,
    Event,
    Future,
    Lock,
    Queue,
    Semaphore,
    Variable,
    as_completed,
    fire_and_forget,
    get_task_stream,
    performance_report,
    wait,
)
from fedcompute.plugins.dask import FederatedCluster

pytestmark = pytest.mark.timeout(180)


def _functions():
    """Task functions as a notebook has them (by value: the endpoint cannot import tests/)."""

    def inc(x):
        return x + 1

    def add(x, y):
        return x + y

    def slow(x, delay):
        time.sleep(delay)
        return x

    def boom(x):
        raise ZeroDivisionError(f"boom {x}")

    def counting_failure(path):
        # Fails the first two times (a file counts attempts across workers).
        import os

        with open(path, "a") as fh:
            fh.write("x")
        if os.path.getsize(path) < 3:
            raise RuntimeError("flaky")
        return "ok"

    def whereami():
        from distributed import get_worker

        return get_worker().address

    def fib(n):
        # Tasks that submit tasks (the documented get_client pattern).
        from distributed import get_client, rejoin, secede

        if n < 2:
            return n
        client = get_client()
        a, b = client.submit(fib, n - 1), client.submit(fib, n - 2)
        secede()
        x, y = client.gather([a, b])
        rejoin()
        return x + y

    def fib_wc(n):
        from distributed import worker_client

        if n < 2:
            return n
        with worker_client() as c:
            a, b = c.submit(fib_wc, n - 1), c.submit(fib_wc, n - 2)
            return a.result() + b.result()

    return inc, add, slow, boom, counting_failure, whereami, fib, fib_wc


inc, add, slow, boom, counting_failure, whereami, fib, fib_wc = _functions()


@pytest.fixture(scope="module")
def cluster(dask_stack):
    with FederatedCluster(dask_stack.endpoint_id, dask_stack.fed_client()) as c:
        c.wait_for_workers(2, timeout=60)
        yield c


@pytest.fixture(scope="module")
def client(cluster):
    with Client(cluster) as c:
        yield c


def _until(check, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


# --- futures ------------------------------------------------------------------------------


def test_submit_result_and_future_attributes(client):
    future = client.submit(inc, 10)
    assert isinstance(future, Future)
    assert future.result(timeout=60) == 11
    assert future.done() and future.status == "finished"
    assert future.key.startswith("inc-")
    # pure=True (the default) reuses the key of the same call
    assert client.submit(inc, 10).key == future.key
    assert client.submit(inc, 10, pure=False).key != future.key
    assert client.submit(inc, 1, key="my-key").key == "my-key"


def test_map_gather_and_futures_as_arguments(client):
    futures = client.map(inc, range(50))
    assert client.gather(futures) == list(range(1, 51))
    total = client.submit(sum, futures)  # a list of futures as an argument
    assert total.result(timeout=60) == sum(range(1, 51))
    pairs = client.map(add, range(5), range(5, 10))
    assert client.gather(pairs) == [5, 7, 9, 11, 13]
    # gather takes nested structures
    assert client.gather({"a": futures[0], "b": [futures[1]]}) == {"a": 1, "b": [2]}


def test_scatter_broadcast_and_who_has(client):
    [data] = client.scatter([np.arange(1000)], broadcast=True)
    assert client.submit(np.sum, data).result(timeout=60) == sum(range(1000))
    _until(lambda: len(client.who_has([data])[data.key]) >= 2)
    as_dict = client.scatter({"x": 1, "y": 2})
    assert client.gather(client.submit(add, as_dict["x"], as_dict["y"])) == 3


def test_as_completed_with_results_and_add(client):
    # (two tasks: the endpoint has two worker slots)
    futures = client.map(slow, [2, 1], [1.0, 0.0], pure=False)
    order = [value for _, value in as_completed(futures, with_results=True)]
    assert order == [1, 2]
    seq = as_completed([client.submit(inc, 1)])
    seq.add(client.submit(inc, 2))
    assert sorted(f.result() for f in seq) == [2, 3]
    batches = list(as_completed(client.map(inc, range(5), pure=False)).batches())
    assert sum(len(b) for b in batches) == 5


def test_wait_first_completed_and_all(client):
    quick, long = client.submit(slow, 1, 0.0, pure=False), client.submit(slow, 2, 3.0, pure=False)
    done, not_done = wait([quick, long], return_when="FIRST_COMPLETED", timeout=60)
    assert quick in done and long in not_done
    done, not_done = wait([quick, long], timeout=60)
    assert not not_done and long.result() == 2


def test_exceptions_traceback_and_retry(client, tmp_path):
    future = client.submit(boom, 7)
    with pytest.raises(ZeroDivisionError, match="boom 7"):
        future.result(timeout=60)
    assert future.status == "error"
    assert isinstance(future.exception(), ZeroDivisionError)
    assert future.traceback() is not None
    # retries= reruns failed tasks; Future.retry() reruns a failed one on request
    path = tmp_path / "attempts"
    assert client.submit(counting_failure, str(path), retries=2).result(timeout=60) == "ok"
    path2 = tmp_path / "attempts2"
    flaky = client.submit(counting_failure, str(path2))
    wait(flaky, timeout=60)
    assert flaky.status == "error"
    flaky.retry()
    wait(flaky, timeout=60)
    flaky.retry()
    assert flaky.result(timeout=60) == "ok"


def test_cancel_and_add_done_callback(client):
    seen = []
    event = threading.Event()
    future = client.submit(inc, 41, pure=False)
    future.add_done_callback(lambda f: (seen.append(f.result()), event.set()))
    assert event.wait(60) and seen == [42]
    long = client.submit(slow, 0, 30, pure=False)
    long.cancel()
    _until(lambda: long.cancelled())
    assert long.status == "cancelled"


def test_fire_and_forget(client, tmp_path):
    target = tmp_path / "forgotten.txt"

    def write(path):
        with open(path, "w") as fh:
            fh.write("done")

    fire_and_forget(client.submit(write, str(target), pure=False))
    _until(lambda: target.exists() and target.read_text() == "done", 60)


def test_run_and_run_on_scheduler(client):
    pids = client.run(lambda: __import__("os").getpid())
    assert set(pids) == set(client.scheduler_info()["workers"])
    assert client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.workers)) == \
        len(pids)


def test_replicate_and_rebalance(client):
    [data] = client.scatter([list(range(100))])
    client.replicate([data], n=2)
    assert len(client.who_has([data])[data.key]) == 2
    client.rebalance()


def test_restrictions_workers_and_allow_other_workers(client):
    worker = sorted(client.scheduler_info()["workers"])[0]
    assert client.submit(whereami, workers=[worker], pure=False).result(timeout=60) == worker
    assert client.submit(whereami, workers=["tcp://10.255.255.1:1"], allow_other_workers=True,
                         pure=False).result(timeout=60)


# --- collections ---------------------------------------------------------------------------


def test_persist_compute_and_delayed(client):
    @dask.delayed
    def double(x):
        return 2 * x

    parts = [double(i) for i in range(4)]
    total = dask.delayed(sum)(parts)
    assert total.compute() == 12
    assert client.compute(total).result(timeout=60) == 12
    persisted = client.persist(total)
    assert persisted.compute() == 12
    futures = client.compute(parts)
    assert client.gather(futures) == [0, 2, 4, 6]
    assert dask.compute(*parts) == (0, 2, 4, 6)


def test_dask_array(client):
    x = da.random.RandomState(0).random_sample((1000, 1000), chunks=(250, 250))
    y = (x + x.T).persist()
    wait(y)
    np.testing.assert_allclose(y.sum().compute(), 2 * x.sum().compute())
    assert da.ones(10, chunks=5).dot(da.ones(10, chunks=5)).compute() == 10


def test_dask_dataframe(client):
    pdf = pd.DataFrame({"k": np.arange(2000) % 5, "v": np.arange(2000.0)})
    ddf = dd.from_pandas(pdf, npartitions=4)
    got = ddf.groupby("k").v.mean().compute().sort_index()
    pd.testing.assert_series_equal(got, pdf.groupby("k").v.mean().sort_index())
    assert len(ddf[ddf.v > 1000]) == 999


def test_dask_bag(client):
    bag = db.from_sequence(range(100), npartitions=4)
    assert bag.map(inc).filter(lambda x: x % 2 == 0).sum().compute() == 2550


# --- coordination primitives ---------------------------------------------------------------


def test_variable_queue_and_publish_dataset(client):
    var = Variable("fed-conformance-var", client=client)
    var.set(client.submit(inc, 99))
    assert var.get(timeout=30).result(timeout=60) == 100
    queue = Queue("fed-conformance-queue", client=client)

    def producer(n):
        from distributed import Queue

        q = Queue("fed-conformance-queue")
        for i in range(n):
            q.put(i)
        return n

    assert client.submit(producer, 3, pure=False).result(timeout=60) == 3
    assert [queue.get(timeout=30) for _ in range(3)] == [0, 1, 2]
    data = client.scatter([1, 2, 3])
    client.publish_dataset(fed_conformance=data)
    assert "fed_conformance" in client.list_datasets()
    assert client.gather(client.get_dataset("fed_conformance")) == [1, 2, 3]
    client.unpublish_dataset("fed_conformance")


def test_event_lock_and_semaphore(client):
    event = Event("fed-conformance-event", client=client)

    def waiter():
        from distributed import Event

        return Event("fed-conformance-event").wait(timeout=30)

    pending = client.submit(waiter, pure=False)
    event.set()
    assert pending.result(timeout=60) is True

    def locked(i):
        from distributed import Lock

        with Lock("fed-conformance-lock"):
            return i

    assert sorted(client.gather(client.map(locked, range(4)))) == [0, 1, 2, 3]
    lock = Lock("fed-conformance-lock-2")
    assert lock.acquire(timeout=10) and lock.locked()
    lock.release()
    sem = Semaphore(max_leases=1, name="fed-conformance-sem")
    assert sem.acquire(timeout=10)
    sem.release()


# --- tasks that talk to the cluster ----------------------------------------------------------


def test_get_worker_get_client_secede_rejoin_and_worker_client(client):
    assert client.submit(whereami, pure=False).result(timeout=60).startswith("tcp://")
    assert client.submit(fib, 8, pure=False).result(timeout=120) == 21
    assert client.submit(fib_wc, 7, pure=False).result(timeout=120) == 13


# --- diagnostics -----------------------------------------------------------------------------


def test_performance_report_and_task_stream(client, tmp_path):
    path = tmp_path / "report.html"
    with performance_report(filename=str(path)):
        client.gather(client.map(inc, range(20), pure=False))
    assert "Dask Performance Report" in path.read_text()
    with get_task_stream(client) as ts:
        client.gather(client.map(inc, range(10), pure=False))
    assert len(ts.data) >= 10
    assert client.profile()  # scheduler-side profile of the recent work


# --- resources -------------------------------------------------------------------------------


def test_resources_no_worker_can_ever_have_fail_at_once(client):
    """This endpoint's workers advertise no resources and its engine adds none: Dask would
    wait for ever; the endpoint errs the task at once, naming what is missing."""
    started = time.monotonic()
    future = client.submit(inc, 1, resources={"GPU": 1}, pure=False)
    with pytest.raises(Exception, match=r"GPU") as info:
        future.result(timeout=60)
    assert time.monotonic() - started < 30
    assert "resources" in str(info.value)
    # Ordinary tasks still run.
    assert client.submit(inc, 2, pure=False).result(timeout=60) == 3


def test_resources_of_the_local_engine(dask_stack):
    """``engine: {type: local, resources: {GPU: 2}}``: every worker advertises them and tasks
    asking for them run; asking for more than any worker has fails at once. (It also keeps
    its dashboard off: ``dashboard: false``.)"""
    endpoint_id = dask_stack.stack.start_endpoint(
        "gpu-box", engine={"type": "local", "workers": 1, "resources": {"GPU": 2},
                           "dashboard": False})
    dask_stack.wait_dask(endpoint_id)
    try:
        with FederatedCluster(endpoint_id, dask_stack.fed_client()) as cluster, \
                Client(cluster) as c:
            assert cluster.dashboard_link == ""
            off = httpx.get(f"{dask_stack.service_url}/console/dashboard/{endpoint_id}/status",
                            headers={"Authorization": f"Bearer {dask_stack.token}"})
            assert off.status_code == 404 and "dashboard: false" in off.json()["message"]
            cluster.wait_for_workers(1, timeout=60)
            info = c.scheduler_info()["workers"]
            assert [w["resources"] for w in info.values()] == [{"GPU": 2}]
            assert c.submit(inc, 1, resources={"GPU": 1}).result(timeout=60) == 2
            assert c.gather(c.map(inc, range(4), resources={"GPU": 2})) == [1, 2, 3, 4]
            with pytest.raises(Exception, match="GPU"):
                c.submit(inc, 1, resources={"GPU": 3}, pure=False).result(timeout=60)
            with pytest.raises(Exception, match="TPU"):
                c.submit(inc, 1, resources={"TPU": 1}, pure=False).result(timeout=60)
    finally:
        dask_stack.stop_endpoint("gpu-box")
