"""``fedcompute.plugins.dask._compat``: each private hook or attribute of distributed's
``Cluster`` that ``FederatedCluster`` relies on still has that shape. A failure here means a
distributed upgrade changed one of them: fix ``_compat.py`` (and only it). No stack needed."""

from __future__ import annotations

import asyncio
import inspect

import pytest
from distributed.deploy import Cluster
from fedcompute.plugins.dask import FederatedCluster, _compat

pytestmark = pytest.mark.timeout(60)


def _params(fn) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p != "self"]


def test_cluster_calls_the_hooks_it_is_given():
    """Cluster calls ``_start`` (when awaited), ``_close`` (close), ``_get_logs`` (get_logs)
    and ``_scaling_status`` (its notebook widget): the names ClusterHooks fills in."""
    for name in ("_start", "_close", "_get_logs", "_scaling_status"):
        assert callable(getattr(Cluster, name)), name
    assert _params(Cluster._get_logs) == ["cluster", "scheduler", "workers"]
    assert "self._close" in inspect.getsource(Cluster.close)
    assert "self._get_logs" in inspect.getsource(Cluster.get_logs)
    assert "self._scaling_status()" in inspect.getsource(Cluster._widget)
    # FederatedCluster's hooks are the forwarding ones, ahead of Cluster's in the MRO.
    for name in ("_start", "_close", "_get_logs", "_scaling_status"):
        assert getattr(FederatedCluster, name) is getattr(_compat.ClusterHooks, name)


class _Probe(_compat.ClusterHooks):
    def __init__(self):
        self.calls = []

    async def start_remote(self):
        self.calls.append("start")

    async def close_remote(self):
        self.calls.append("close")

    async def fetch_logs(self, cluster, scheduler, workers):
        self.calls.append(("logs", cluster, scheduler, workers))
        return {}

    def scaling_status_html(self):
        return "<table/>"


def test_hooks_forward_to_public_names():
    probe = _Probe()

    async def run():
        await probe._start()
        await probe._get_logs(True, False, ["w"])
        await probe._close()

    asyncio.run(run())
    assert probe.calls == ["start", ("logs", True, False, ["w"]), "close"]
    assert probe._scaling_status() == "<table/>"


def test_cluster_state_helpers():
    async def make() -> Cluster:
        return Cluster(asynchronous=True)  # a bare manager: no scheduler

    cluster = asyncio.run(make())
    try:
        assert cluster._adaptive is None
        marker = object()
        _compat.set_adaptive(cluster, marker)
        assert cluster._adaptive is marker
        _compat.manager_log(cluster, "probe line")
        assert _compat.manager_log_lines(cluster)[-1] == "probe line"
        assert callable(cluster._loop_runner.start) and callable(cluster._loop_runner.stop)
    finally:
        _compat.set_adaptive(cluster, None)
        cluster.status = cluster.status.closed
