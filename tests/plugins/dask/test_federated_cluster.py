"""``Client(FederatedCluster(endpoint_id))`` end to end: the client reaches only the service; the
endpoint's scheduler and workers run in another process that dials out to the service."""

from __future__ import annotations

import asyncio
import threading
import time
import traceback

import dask
import dask.array as da
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from distributed import Client, as_completed, wait
from fedcompute import errors
from fedcompute.plugins.dask import (
    EndpointUnavailable,
    FederatedCluster,
    VersionMismatchError,
    fed_address,
)
from fedcompute.plugins.dask import cluster as cluster_module

pytestmark = pytest.mark.timeout(180)


def _task_functions():
    """Task functions as a notebook would have them: the endpoint cannot import this test
    module, and Dask pickles importable functions by reference; local ones go by value."""

    def inc(x):
        return x + 1

    def slow_inc(x, delay=0.2):
        time.sleep(delay)
        return x + 1

    class PipelineError(Exception):
        pass

    def fail(message):
        raise PipelineError(message)

    return inc, slow_inc, PipelineError, fail


inc, slow_inc, PipelineError, fail = _task_functions()


@pytest.fixture(scope="module")
def cluster(dask_stack):
    with FederatedCluster(dask_stack.endpoint_id, dask_stack.fed_client()) as c:
        yield c


@pytest.fixture(scope="module")
def client(cluster):
    with Client(cluster) as c:
        yield c


def test_cluster_basics(cluster, client, dask_stack):
    assert cluster.scheduler_address == f"fed://{dask_stack.service_url.split('://')[1]}/" \
                                       f"{dask_stack.endpoint_id}"
    assert client.scheduler.address == cluster.scheduler_address
    cluster.wait_for_workers(2, timeout=60)
    assert len(cluster.scheduler_info["workers"]) >= 2
    assert "FederatedCluster" in repr(cluster)
    assert "FederatedCluster" in cluster._repr_html_()
    assert cluster.dashboard_link == (f"{dask_stack.service_url}/console/dashboard/"
                                      f"{dask_stack.endpoint_id}/status")
    assert cluster.bridge_info["endpoint_id"] == dask_stack.endpoint_id
    assert not client.direct_to_workers
    assert cluster.get_client() is client  # the current client of this cluster
    # The scheduler's single worker-status plugin still feeds the endpoint's own cluster
    # manager (over TCP), not this remote cluster (over the relay).
    peer = client.run_on_scheduler(
        lambda dask_scheduler: str(dask_scheduler.plugins["worker-status"].bcomm.comm.peer_address))
    assert peer.startswith("tcp://")


def test_futures_submit_map_gather_as_completed(client):
    assert client.submit(inc, 1).result(timeout=60) == 2
    futures = client.map(inc, range(200))
    assert client.gather(futures) == list(range(1, 201))
    seen = sorted(f.result() for f in as_completed(client.map(slow_inc, range(6), delay=0.05)))
    assert seen == list(range(1, 7))


def test_delayed(client):
    @dask.delayed
    def add(a, b):
        return a + b

    total = add(add(1, 2), add(3, 4))
    assert total.compute() == 10
    assert client.compute(total).result(timeout=60) == 10


def test_array_reduction(client):
    x = da.random.RandomState(42).random_sample((2000, 2000), chunks=(500, 500))
    assert float(da.ones((2000, 2000), chunks=500).sum().compute()) == 4_000_000.0
    mean = float(x.mean().compute())
    assert 0.49 < mean < 0.51


def test_dataframe_groupby(client):
    pdf = pd.DataFrame({"key": np.arange(10_000) % 7, "value": np.arange(10_000, dtype="f8")})
    ddf = dd.from_pandas(pdf, npartitions=8)
    got = ddf.groupby("key")["value"].sum().compute().sort_index()
    pd.testing.assert_series_equal(got, pdf.groupby("key")["value"].sum().sort_index())


def test_persist(client):
    x = da.arange(1_000_000, chunks=100_000).persist()
    wait(x)
    assert len(client.who_has(x)) == 10
    assert int(x.sum().compute()) == sum(range(1_000_000))


def test_scatter_large_and_small(client):
    small = client.scatter([1, 2, 3])
    assert client.gather(client.map(inc, small)) == [2, 3, 4]
    # Larger than distributed's 8 MiB websocket shard, both ways through the relay.
    blob = np.random.default_rng(0).integers(0, 255, 20 * 2**20, dtype=np.uint8).tobytes()
    [future] = client.scatter([blob])
    assert client.submit(len, future).result(timeout=60) == len(blob)
    assert client.gather(future) == blob


def test_remote_exception(client):
    future = client.submit(fail, "bad input 42")
    with pytest.raises(PipelineError, match="bad input 42"):
        future.result(timeout=60)
    assert "fail" in "".join(traceback.format_tb(future.traceback()))


def test_get_logs(cluster, client):
    logs = cluster.get_logs()
    assert "Scheduler" in logs and "Cluster" in logs
    assert "dask bridge" in logs["Cluster"]
    workers = set(client.scheduler_info()["workers"])
    assert workers <= set(logs)
    assert set(cluster.get_logs(cluster=False, scheduler=False)) == workers


def test_two_clients_at_once(dask_stack, client):
    other_cluster = FederatedCluster(dask_stack.endpoint_id, dask_stack.fed_client())
    results: dict[str, list] = {}

    def work(name, c, offset):
        results[name] = c.gather(c.map(inc, range(offset, offset + 300), pure=False))

    with Client(other_cluster) as other:
        threads = [threading.Thread(target=work, args=("a", client, 0)),
                   threading.Thread(target=work, args=("b", other, 1000))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert results["a"] == list(range(1, 301))
        assert results["b"] == list(range(1001, 1301))
        assert len(client.scheduler_info()["workers"]) == len(other.scheduler_info()["workers"])
    other_cluster.close()


def test_async_mode(dask_stack):
    async def main():
        async with FederatedCluster(dask_stack.endpoint_id, dask_stack.fed_client(),
                                    asynchronous=True) as cluster:
            async with Client(cluster, asynchronous=True) as c:
                assert await c.submit(inc, 41) == 42
                futures = c.map(inc, range(20))
                assert await c.gather(futures) == list(range(1, 21))
                logs = await cluster.get_logs(workers=False)
                assert "Scheduler" in logs

    asyncio.run(main())


def _workers(cluster, n, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cluster.sync(cluster._refresh)
        if len(cluster.scheduler_info["workers"]) == n:
            return
        time.sleep(0.5)
    raise AssertionError(f"expected {n} workers, have {len(cluster.scheduler_info['workers'])}")


def test_scale_and_adapt_at_the_endpoint(dask_stack):
    cluster = FederatedCluster(dask_stack.endpoint_id, dask_stack.fed_client(),
                               shutdown_on_close=True)
    try:
        with Client(cluster) as c:
            cluster.scale(3)
            cluster.wait_for_workers(3, timeout=90)
            cluster.scale(1)
            _workers(cluster, 1)
            assert cluster.bridge_info["requested_workers"] == 1
            adaptive = cluster.adapt(minimum=1, maximum=2, interval="200ms", wait_count=2)
            assert adaptive.options["maximum"] == 2
            # Work piles up on one worker: the endpoint's adaptive scaling adds the second.
            futures = c.map(slow_inc, range(40), delay=0.5, pure=False)
            _workers(cluster, 2)
            assert cluster.bridge_info["adaptive"] is True
            assert "Adaptive" in cluster.scaling_status_html()
            c.cancel(futures)
    finally:
        cluster.close()
    # With shutdown_on_close, closing undid the remote scaling: back to the configured size.
    with FederatedCluster(dask_stack.endpoint_id, dask_stack.fed_client()) as again:
        assert again.bridge_info["adaptive"] is False
        _workers(again, 2)


def test_adapt_keeps_running_after_the_client_leaves(dask_stack):
    cluster = FederatedCluster(dask_stack.endpoint_id, dask_stack.fed_client())
    cluster.adapt(minimum=1, maximum=2, interval="200ms", wait_count=2)
    cluster.close()  # shutdown_on_close=False: the endpoint keeps adapting on its own
    time.sleep(3)
    with FederatedCluster(dask_stack.endpoint_id, dask_stack.fed_client()) as again:
        assert again.bridge_info["adaptive"] is True
        assert again.bridge_info["remote_adaptive"] is True
        _workers(again, 1)  # idle: scaled down to the minimum with no client connected
        again.scale(2)  # scale() turns adaptivity off
        _workers(again, 2)
        assert again.bridge_info["adaptive"] is False


def test_unauthorised_user_refused(dask_stack):
    with pytest.raises(errors.NotFoundError, match="not found"):
        FederatedCluster(dask_stack.endpoint_id, dask_stack.fed_client(dask_stack.bob_token))
    with pytest.raises(errors.AuthError):
        FederatedCluster(dask_stack.endpoint_id, dask_stack.fed_client("fcu_not-a-token"))
    # A raw client with bob's token, past the SDK's checks: the relay refuses at once.
    url = fed_address(dask_stack.service_url, dask_stack.endpoint_id)
    started = time.monotonic()
    with pytest.raises(OSError, match="404"):
        Client(url, timeout=20, security=_bearer(dask_stack.bob_token))
    assert time.monotonic() - started < 10


def test_shared_user_allowed(dask_stack):
    owner = dask_stack.fed_client()
    owner.request("PATCH", f"/endpoints/{dask_stack.endpoint_id}", body={"shared_with": ["bob"]})
    try:
        with FederatedCluster(dask_stack.endpoint_id, dask_stack.fed_client(dask_stack.bob_token)
                              ) as cluster, Client(cluster) as c:
            assert c.submit(inc, 1).result(timeout=60) == 2
    finally:
        owner.request("PATCH", f"/endpoints/{dask_stack.endpoint_id}", body={"shared_with": []})


def test_endpoint_with_allowed_functions_refuses_dask(dask_stack):
    reg = dask_stack.register("restricted", allowed_functions=[
        "00000000-0000-0000-0000-000000000000"])
    with pytest.raises(errors.ForbiddenError, match="allowed_functions"):
        FederatedCluster(reg["endpoint_id"], dask_stack.fed_client())


def test_version_mismatch_is_clear(dask_stack, monkeypatch):
    real = cluster_module.local_versions()
    monkeypatch.setattr(cluster_module, "local_versions",
                        lambda: {**real, "distributed": "1999.1.0"})
    with pytest.raises(VersionMismatchError, match=r"distributed +client 1999\.1\.0 +endpoint"):
        FederatedCluster(dask_stack.endpoint_id, dask_stack.fed_client())
    with pytest.warns(UserWarning, match="different versions"):
        FederatedCluster(dask_stack.endpoint_id, dask_stack.fed_client(),
                         check_versions="warn").close()


def test_dashboard_through_the_service(cluster, client, dask_stack):
    """The endpoint's Bokeh dashboard, relayed: for the endpoint's users only (the browser's
    side, websockets included, is tests/console/test_browser.py)."""
    import httpx

    link = cluster.dashboard_link
    assert client.submit(inc, 1, pure=False).result(timeout=60) == 2
    page = httpx.get(link, headers={"Authorization": f"Bearer {dask_stack.token}"}, timeout=60)
    assert page.status_code == 200 and "<title>Dask" in page.text, page.text[:500]
    script = page.text.split('src="', 2)[1].split('"')[0]  # Bokeh's JS, under the same prefix
    assert script.startswith(f"/console/dashboard/{dask_stack.endpoint_id}/static/")
    js = httpx.get(dask_stack.service_url + script, timeout=60,
                   headers={"Authorization": f"Bearer {dask_stack.token}"})
    assert js.status_code == 200 and len(js.content) > 100_000
    # Bob may not use alice's endpoint: it does not exist for him. No credentials: the
    # console's sign-in page, which comes back here; a wrong token: 401.
    other = httpx.get(link, headers={"Authorization": f"Bearer {dask_stack.bob_token}"})
    assert other.status_code == 404 and "not found" in other.json()["message"]
    anonymous = httpx.get(link)
    assert anonymous.status_code == 302
    assert anonymous.headers["location"].startswith("/console/login?next=/console/dashboard/")
    assert httpx.get(link, headers={"Authorization": "Bearer fcu_wrong"}).status_code == 401
    info = dask_stack.fed_client().request("GET", f"/endpoints/{dask_stack.endpoint_id}/dask/info")
    assert info["dashboard"] is True


def test_endpoint_restart_is_a_clear_error(dask_stack, caplog):
    endpoint_id = dask_stack.start_endpoint("restarting", workers=1)
    cluster = FederatedCluster(endpoint_id, dask_stack.fed_client(), poll_interval=0.5)
    c = Client(cluster, timeout=60)
    try:
        assert c.submit(inc, 1).result(timeout=60) == 2
        pending = c.submit(slow_inc, 1, delay=60)
        time.sleep(0.5)
        dask_stack.stop_endpoint("restarting", kill=True)
        with pytest.raises(Exception, match="scheduler-connection-lost|lost the connection"):
            pending.result(timeout=60)
        # While it is down, a new cluster says so plainly.
        with pytest.raises(EndpointUnavailable, match="offline"):
            FederatedCluster(endpoint_id, dask_stack.fed_client())
        dask_stack.start_endpoint("restarting", workers=1)
        deadline = time.monotonic() + 60
        while c.status != "running" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert c.submit(inc, 2).result(timeout=60) == 3  # the client reconnected
        deadline = time.monotonic() + 10
        while "restarted" not in cluster.get_logs(scheduler=False, workers=False)["Cluster"]:
            assert time.monotonic() < deadline, "the cluster did not notice the restart"
            time.sleep(0.2)
    finally:
        c.close()
        cluster.close()
        dask_stack.stop_endpoint("restarting")


def _bearer(token):
    from distributed.security import Security

    return Security(extra_conn_args={"headers": {"Authorization": f"Bearer {token}"}})
