"""Fixtures for the Dask adapter, on the real stack (``fed_stack``): the service (gunicorn + RQ
worker + embedded Valkey) and endpoint agents (Dask LocalCluster + the Dask bridge), each a
process of its own. The tests' client reaches the endpoints only through the service."""

from __future__ import annotations

import signal
import time

import pytest
from fedcompute import Client as FedClient

from tests.stack import Stack


class DaskStack:
    """``fed_stack`` plus what the Dask tests need: user ``bob``, extra endpoints."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.bob_token = stack.create_user("bob")
        self.registered: dict[str, dict] = {}

    @property
    def service_url(self) -> str:
        return self.stack.service_url

    @property
    def token(self) -> str:
        return self.stack.token

    @property
    def endpoint_id(self) -> str:
        return self.stack.endpoint_id

    def fed_client(self, token: str | None = None) -> FedClient:
        return FedClient(self.service_url, token or self.token)

    def register(self, name: str, **options) -> dict:
        """Register an endpoint of alice's with no agent running (the tests play its part)."""
        reg = self.fed_client().request("POST", "/endpoints", body={"name": name, **options})
        self.registered[name] = reg
        return reg

    def start_endpoint(self, name: str, workers: int = 2) -> str:
        """Start an endpoint agent; return once its Dask bridge is connected to the service."""
        endpoint_id = self.stack.start_endpoint(name, engine={"type": "local",
                                                              "workers": workers})
        self.wait_dask(endpoint_id)
        return endpoint_id

    def stop_endpoint(self, name: str, kill: bool = False) -> None:
        self.stack.stop_endpoint(name, sig=signal.SIGKILL if kill else signal.SIGTERM)

    def wait_dask(self, endpoint_id: str, timeout: float = 60.0) -> None:
        client = self.fed_client()
        deadline = time.monotonic() + timeout
        while not client.request("GET", f"/endpoints/{endpoint_id}/dask/info")["connected"]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"endpoint {endpoint_id}'s Dask bridge did not connect")
            time.sleep(0.2)


@pytest.fixture(scope="session")
def dask_stack(fed_stack):
    stack = DaskStack(fed_stack)
    stack.wait_dask(fed_stack.endpoint_id)
    return stack
