"""``Client(FederatedCluster(...))`` through haproxy in front of three instances: the user's
comms and the endpoint's dial-backs land on different instances (haproxy balances by least
connections), and hop between them. Futures, dask.array, dask.dataframe and scatter work."""

from __future__ import annotations

import pytest
from fedcompute.service.store import keys
from fedcompute.testing import ScaledService

pytestmark = [pytest.mark.timeout(600)]


def inc(x):
    return x + 1


def test_federated_cluster_across_instances(tmp_path_factory):
    import dask.array as da
    import dask.dataframe as dd
    import pandas as pd
    from distributed import Client
    from fedcompute.plugins.dask import FederatedCluster

    home = tmp_path_factory.mktemp("dask-scale")
    with ScaledService(home, instances=3) as service:
        stack = service.stack
        endpoint_id = stack.start_endpoint("ep", engine={"type": "local", "workers": 2})
        redis = service.redis_client()
        with FederatedCluster(endpoint_id, service_url=service.url, token=stack.token) as cluster, \
                Client(cluster) as client:
            assert client.submit(inc, 41).result(timeout=120) == 42
            assert sum(client.gather(client.map(inc, range(100)))) == sum(range(1, 101))
            x = da.ones((2000, 2000), chunks=(500, 500))
            assert float((x + 1).sum().compute(scheduler=client)) == 2 * 2000 * 2000
            frame = pd.DataFrame({"k": [i % 7 for i in range(7000)], "v": range(7000)})
            df = dd.from_pandas(frame, npartitions=8)
            got = df.groupby("k").v.sum().compute(scheduler=client)
            assert got.to_dict() == frame.groupby("k").v.sum().to_dict()
            [big] = client.scatter([list(range(100_000))])
            assert client.submit(len, big).result(timeout=120) == 100_000
        hops = int(redis.get(keys.relay_hops()) or 0)
        assert hops >= 1, "every dial-back reached the instance of its user's side"
