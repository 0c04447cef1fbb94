"""The bridge's scaling handlers on a real in-process LocalCluster (no service): caps, reset,
and endpoints that scale adaptively by themselves (as batch engines do)."""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import pytest
from distributed import LocalCluster
from distributed.deploy import Adaptive
from fedcompute.endpoint.dask_bridge import DaskBridge, dask_versions
from fedcompute.plugins.dask import check_versions

pytestmark = pytest.mark.timeout(120)


class EngineAdaptive(Adaptive):
    """Like a batch engine's Adaptive: takes an extra argument."""

    def __init__(self, *args, engine, **kwargs):
        self.engine = engine
        super().__init__(*args, **kwargs)


def _bridge(cluster, **kwargs) -> DaskBridge:
    bridge = DaskBridge("http://127.0.0.1:9", "fce_x", "00000000-0000-0000-0000-000000000001",
                        SimpleNamespace(cluster=cluster), **kwargs)
    bridge._scheduler = cluster.scheduler
    bridge._remember_engine_scaling()
    return bridge


@pytest.fixture
def cluster():
    with LocalCluster(n_workers=1, processes=False, threads_per_worker=1,
                      dashboard_address=None) as c:
        yield c


def test_scale_is_capped_and_reset_restores(cluster):
    bridge = _bridge(cluster, max_workers=2)
    assert bridge._h_scale(n=5)["requested_workers"] == 2
    options = bridge._h_adapt(minimum=0, maximum=10, interval="1s")["options"]
    assert options["maximum"] == 2
    assert bridge._h_info()["adaptive"] is True
    with pytest.raises(ValueError, match="unsupported adapt option"):
        bridge._h_adapt(Adaptive="evil")
    assert bridge._h_reset()["requested_workers"] == 1
    assert bridge._h_info()["adaptive"] is False


def test_adaptive_endpoint_keeps_its_adaptive_class(cluster):
    engine_marker = object()
    cluster.adapt(Adaptive=EngineAdaptive, engine=engine_marker, minimum=1, maximum=3,
                  interval="1s")
    bridge = _bridge(cluster)
    assert bridge._h_info()["endpoint_adaptive"] is True
    # scale(n) on an adaptive endpoint: n becomes the floor, adaptivity goes on.
    reply = bridge._h_scale(n=2)
    assert reply["minimum"] == 2
    assert isinstance(cluster._adaptive, EngineAdaptive)
    assert cluster._adaptive.engine is engine_marker
    assert cluster._adaptive.minimum == 2 and cluster._adaptive.maximum == 3
    bridge._h_adapt(minimum=0, maximum=math.inf)
    assert isinstance(cluster._adaptive, EngineAdaptive)
    bridge._h_reset()
    assert isinstance(cluster._adaptive, EngineAdaptive)
    assert (cluster._adaptive.minimum, cluster._adaptive.maximum) == (1, 3)
    assert cluster._adaptive.periodic_callback is not None


def test_version_check_names_each_mismatch():
    mine = dask_versions()
    assert check_versions(mine, mine) == []
    assert check_versions({**mine, "python": mine["python"].rsplit(".", 1)[0] + ".99"}, mine) == []
    problems = check_versions({**mine, "dask": "2000.1.1", "python": "2.7.18"}, mine)
    assert [p.split()[0] for p in problems] == ["python", "dask"]
    assert "endpoint 2000.1.1" in problems[1]


def _install_guard(cluster, engine) -> None:
    from fedcompute.endpoint.resources_guard import ResourcesGuard

    async def install():
        await ResourcesGuard(engine).install(cluster.scheduler)

    cluster.sync(install)


def test_guard_errs_tasks_no_worker_can_ever_run(cluster):
    from distributed import Client
    from fedcompute.endpoint.resources_guard import ResourcesUnavailable

    _install_guard(cluster, SimpleNamespace(cluster=cluster, options={"type": "local"}))
    with Client(cluster) as client:
        future = client.submit(sum, [1, 2], resources={"GPU": 1}, pure=False)
        with pytest.raises(ResourcesUnavailable, match=r"resources \{'GPU': 1\}"):
            future.result(timeout=30)
        assert client.submit(sum, [1, 2], pure=False).result(timeout=30) == 3


def test_guard_lets_tasks_wait_for_workers_the_engine_would_add(cluster):
    """An adaptive batch engine whose future workers carry ``worker_resources``: the task
    waits (Dask's no-worker state) and runs once such a worker joins."""
    from distributed import Client, Worker

    engine = SimpleNamespace(cluster=cluster, options={"type": "slurm",
                                                       "worker_resources": {"GPU": 2}})
    _install_guard(cluster, engine)
    with Client(cluster) as client:
        future = client.submit(sum, [1, 2], resources={"GPU": 1}, pure=False)
        deadline = time.monotonic() + 30
        while client.run_on_scheduler(lambda dask_scheduler, key=future.key: getattr(
                dask_scheduler.tasks.get(key), "state", None)) != "no-worker":
            assert time.monotonic() < deadline
            time.sleep(0.05)

        async def gpu_worker():
            return await Worker(cluster.scheduler_address, nthreads=1, resources={"GPU": 2})

        worker = client.sync(gpu_worker)
        try:
            assert future.result(timeout=30) == 3
        finally:
            client.sync(worker.close)
