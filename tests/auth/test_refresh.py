"""Long runs outlive their access tokens (the provider issues 6 s tokens): an Executor run, a
Prefect flow through FederatedTaskRunner, an Airflow hook built from a connection holding a
refresh token, and FederatedCluster comms opened after the first token expired. The SDK
refreshes before expiry and once more on a 401."""

from __future__ import annotations

import json
import time

import jwt
import pytest
from fedcompute import Client, Executor, oauth

from tests.reliability.helpers import wait_for

pytestmark = pytest.mark.timeout(600)


def slow_square(x):
    import time as _time

    _time.sleep(1.5)  # work that takes a while, so the run spans several token lifetimes
    return x * x


def _exp(token: str) -> float:
    return jwt.decode(token, options={"verify_signature": False})["exp"]


def test_an_executor_run_outlives_its_access_token(auth_stack, idp):
    client = idp.client(auth_stack.service_url, "jill", ["lab"])
    tokens = [client.auth.session.access_token]
    refreshed = idp.stats()["refresh"]
    with Executor(auth_stack.endpoint_id, client=client) as ex:
        futures = [ex.submit(slow_square, i) for i in range(4)]  # in flight across expiries
        for i in range(3):
            # Each wave is submitted after the token it started with has expired.
            wait_for(lambda t=tokens[-1]: time.time() > _exp(t), 30, "the token to expire")
            assert ex.submit(slow_square, 10 + i).result(timeout=120) == (10 + i) ** 2
            tokens.append(client.auth.session.access_token)
        assert [f.result(timeout=120) for f in futures] == [0, 1, 4, 9]
    assert len(set(tokens)) == len(tokens)  # a new access token for every wave
    assert idp.stats()["refresh"] - refreshed >= 3


def test_a_401_refreshes_once_and_retries(auth_stack, idp):
    session = idp.login("jill", ["lab"])
    token = session.access_token
    wait_for(lambda: time.time() > _exp(token) + 2, 30, "the access token to expire")
    session.expires_at = time.time() + 3600  # the client believes it is still valid
    client = Client(auth_stack.service_url, auth=oauth.RefreshingAuth(session))
    assert client.whoami()["name"] == "jill"
    assert client.auth.session.access_token != token


def test_a_prefect_flow_outlives_its_access_token(auth_stack, idp, tmp_path_factory):
    import os

    os.environ.setdefault("PREFECT_HOME", str(tmp_path_factory.mktemp("prefect-home")))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from fedcompute.plugins.prefect import FederatedTaskRunner
    from prefect import flow, task
    from prefect.testing.utilities import prefect_test_harness

    client = idp.client(auth_stack.service_url, "kim", ["lab"])
    first = client.auth.session.access_token

    @task
    def square(x):
        return slow_square(x)

    @flow(task_runner=FederatedTaskRunner(auth_stack.endpoint_id, client=client))
    def squares(n: int) -> list[int]:
        return [f.result() for f in square.map(range(n))]

    with prefect_test_harness(server_startup_timeout=180):
        started = time.time()
        assert squares(6) == [i * i for i in range(6)]
    assert time.time() - started > idp.lifetime
    assert time.time() > _exp(first) and client.auth.session.access_token != first


def test_an_airflow_connection_with_a_refresh_token(auth_stack, idp):
    from airflow.models.connection import Connection
    from fedcompute.plugins.airflow.hooks import FederatedComputeHook, settings_from_connection

    session = idp.login("lena", ["lab"])
    conn = Connection(conn_id="fc", conn_type="fedcompute", host=auth_stack.service_url,
                      extra=json.dumps({"endpoint_id": auth_stack.endpoint_id,
                                        "refresh_token": session.refresh_token,
                                        "token_endpoint": session.token_endpoint,
                                        "client_id": session.client_id}))
    hook = FederatedComputeHook("fc", settings=settings_from_connection(conn))
    assert hook.get_conn().whoami()["name"] == "lena"
    first = hook.get_conn().auth.session.access_token
    wait_for(lambda: time.time() > _exp(first), 30, "the first access token to expire")
    task_id, group = hook.submit(slow_square, (7,))
    assert hook.wait(task_id, group, timeout=120)
    assert hook.get_task(task_id)["result"] == 49
    assert hook.get_conn().auth.session.access_token != first
    hook.close()


def test_federated_cluster_comms_take_a_fresh_token(auth_stack, idp):
    from distributed import Client as DaskClient
    from fedcompute.plugins.dask import FederatedCluster

    fed = idp.client(auth_stack.service_url, "mia", ["lab"])
    wait_for(lambda: fed.request("GET", f"/endpoints/{auth_stack.endpoint_id}/dask/info")
             ["connected"], 120, "the endpoint's Dask bridge")
    first = fed.auth.session.access_token
    with FederatedCluster(auth_stack.endpoint_id, client=fed) as cluster:
        with DaskClient(cluster) as dask:
            assert dask.submit(sum, [1, 2, 3]).result(timeout=60) == 6
        wait_for(lambda: time.time() > _exp(first) + 1, 30, "the first access token to expire")
        # New comms after the token expired: each connect asks the Client for a fresh token.
        with DaskClient(cluster) as dask:
            assert dask.submit(slow_square, 4).result(timeout=120) == 16
    assert fed.auth.session.access_token != first
