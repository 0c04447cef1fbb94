"""One private stack for the security tests: users alice and bob; alice's endpoints ``local``
(private) and ``shared`` (shared with bob), each a real agent with one Dask worker."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from fedcompute import Client
from fedcompute.testing import LocalStack

from tests.reliability.helpers import running_stack


@dataclass
class SecurityStack:
    stack: LocalStack
    bob_token: str
    private_id: str
    shared_id: str

    @property
    def url(self) -> str:
        return self.stack.service_url

    def alice(self) -> Client:
        return self.stack.client()

    def bob(self) -> Client:
        return self.stack.client(self.bob_token)


@pytest.fixture(scope="package")
def sec(tmp_path_factory):
    # Short long-polls: the fuzzer calls them with every `wait` the schema allows.
    env = {"FEDCOMPUTE_MAX_RESULT_WAIT": 1, "FEDCOMPUTE_MAX_LEASE_WAIT": 1}
    with running_stack(tmp_path_factory.mktemp("security"), env=env, workers=1) as stack:
        bob = stack.create_user("bob")
        shared = stack.start_endpoint("shared", shared_with=["bob"])
        yield SecurityStack(stack, bob, stack.endpoint_id, shared)
