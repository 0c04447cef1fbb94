"""``fedcompute.endpoint._compat``: each private distributed / dask-jobqueue API it wraps still
has the shape the endpoint relies on. A failure here means an upgrade changed one of them:
fix ``_compat.py`` (and only it)."""

from __future__ import annotations

import asyncio
import collections
import inspect

import pytest
from distributed import Client, LocalCluster
from distributed.batched import BatchedSend
from distributed.comm.core import Comm, Listener
from distributed.deploy import Adaptive
from fedcompute.endpoint import _compat

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=1, processes=False, threads_per_worker=1,
                      dashboard_address=None) as c:
        yield c


def test_cluster_adaptive_and_its_options(cluster):
    assert _compat.cluster_adaptive(cluster) is None
    cluster.adapt(minimum=1, maximum=2, interval="1s")
    adaptive = _compat.cluster_adaptive(cluster)
    assert isinstance(adaptive, Adaptive) and adaptive.periodic_callback is not None
    assert _compat.adaptive_options(cluster) == {"minimum": 1, "maximum": 2, "interval": "1s"}
    # Cluster.adapt merges into the last call's options; readapt starts from nothing.
    _compat.readapt(cluster, maximum=3)
    assert _compat.adaptive_options(cluster)["maximum"] == 3
    assert "interval" not in _compat.adaptive_options(cluster)
    assert _compat.cluster_adaptive(cluster).minimum == 0
    _compat.stop_adaptive(cluster)
    assert _compat.cluster_adaptive(cluster) is None


def test_cluster_manager_logs(cluster):
    cluster._log("compat probe")  # the same private API FederatedCluster's _compat wraps
    lines = _compat.cluster_manager_logs(cluster)
    assert isinstance(cluster._cluster_manager_logs, list | collections.deque)
    stamp, text = lines[-1]
    assert text == "compat probe" and hasattr(stamp, "strftime")


def test_client_batching_and_worker_streams(cluster):
    with Client(cluster, set_as_default=False) as client:
        assert isinstance(client.scheduler_comm, BatchedSend)
        _compat.set_client_batching(client, 0.001)
        assert client.scheduler_comm.interval == 0.001
        streams = _compat.worker_streams(cluster.scheduler)
        assert set(streams) == set(cluster.scheduler.workers)
        assert all(isinstance(s, BatchedSend) and hasattr(s, "interval")
                   for s in streams.values())
        assert client.submit(sum, [1, 2]).result(timeout=30) == 3  # still works after


def test_listener_handshake_mirrors_distributed():
    # What Listener.on_connection does, and the methods it uses.
    source = inspect.getsource(Listener.on_connection)
    for name in ("handshake_info", "handshake_configuration", "remote_info", "local_info",
                 "handshake_options"):
        assert name in source, name
    assert list(inspect.signature(Comm.handshake_configuration).parameters) == ["local",
                                                                                 "remote"]

    class FakeComm:
        peer_address, local_address = "ws://peer:1", "ws://me:2"
        same_host = False
        handshake_info = Comm.handshake_info
        handshake_configuration = staticmethod(Comm.handshake_configuration)

        def __init__(self):
            self.sent = []

        async def write(self, msg):
            self.sent.append(msg)

        async def read(self):
            return {**self.handshake_info(), "pickle-protocol": 5}

    comm = FakeComm()
    asyncio.run(_compat.listener_handshake(comm))
    assert comm.sent[0]["pickle-protocol"] == 4 and comm.sent[0]["compression"] is None
    assert comm.remote_info["address"] == "ws://peer:1"
    assert comm.local_info["address"] == "ws://me:2"
    assert comm.handshake_options["pickle-protocol"] == 4


def test_jobqueue_internals(tmp_path):
    from dask_jobqueue import SLURMCluster

    with SLURMCluster(cores=2, processes=2, memory="2GB", scheduler_options={
            "host": "127.0.0.1", "dashboard_address": None},
            log_directory=str(tmp_path)) as cluster:
        job = _compat.job_template(cluster)
        assert (job.worker_processes, job.worker_process_threads) == (2, 1)
        assert isinstance(cluster._lock, asyncio.Lock)
        assert _compat.is_rescaling(cluster) is False
        assert inspect.iscoroutinefunction(cluster._correct_state_internal)
        assert not [p for p in inspect.signature(cluster._correct_state).parameters.values()
                    if p.default is p.empty]
