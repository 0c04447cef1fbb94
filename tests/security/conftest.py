"""One private stack for the security tests: users alice and bob; alice's endpoints ``local``
(private) and ``shared`` (shared with bob), each a real agent with one Dask worker. The service
also trusts a real OpenID Connect provider (``tests/auth/provider.py``, its own process), so the
tests can run as OIDC users too (``users``: the same alice and bob, signed in either way)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from fedcompute import Client
from fedcompute.testing import LocalStack

from tests.auth.oidc import Provider, issuer_entry, write_config
from tests.reliability.helpers import running_stack


@dataclass
class SecurityStack:
    stack: LocalStack
    bob_token: str
    private_id: str
    shared_id: str
    idp: Provider

    @property
    def url(self) -> str:
        return self.stack.service_url

    def alice(self) -> Client:
        return self.stack.client()

    def bob(self) -> Client:
        return self.stack.client(self.bob_token)


@pytest.fixture(scope="package")
def sec(tmp_path_factory):
    # Tokens outlive each test module's calls; refreshing is tested in tests/auth.
    idp = Provider(lifetime=300)
    home = tmp_path_factory.mktemp("security")
    config = write_config(home / "oidc.yaml", [issuer_entry(idp)])
    # Short long-polls: the fuzzer calls them with every `wait` the schema allows.
    env = {"FEDCOMPUTE_MAX_RESULT_WAIT": 1, "FEDCOMPUTE_MAX_LEASE_WAIT": 1,
           "FEDCOMPUTE_OIDC_CONFIG": config}
    try:
        with running_stack(home, env=env, workers=1) as stack:
            bob = stack.create_user("bob")
            shared = stack.start_endpoint("shared", shared_with=["bob"])
            yield SecurityStack(stack, bob, stack.endpoint_id, shared, idp)
    finally:
        idp.stop()


@dataclass
class Users:
    """alice and bob, signed in with static tokens or through the OIDC provider."""

    how: str
    alice: Callable[[], Client]
    bob: Callable[[], Client]
    alice_token: Callable[[], str]
    bob_token: Callable[[], str]


@pytest.fixture(scope="module", params=["static", "oidc"])
def users(request, sec) -> Users:
    if request.param == "static":
        return Users("static", sec.alice, sec.bob, lambda: sec.stack.token,
                     lambda: sec.bob_token)
    alice = sec.idp.client(sec.url, "alice")
    bob = sec.idp.client(sec.url, "bob")
    assert (alice.whoami()["via"], bob.whoami()["name"]) == ("oidc", "bob")
    return Users("oidc", lambda: alice, lambda: bob, lambda: alice.token, lambda: bob.token)
