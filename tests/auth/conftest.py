"""One real stack for the sign-in tests: two OpenID Connect providers, each its own process
(``idp``: JWT access tokens living 6 s; ``idp_opaque``: opaque tokens, introspected), and a
service configured to trust both, with user ``alice`` (a static token) and her endpoint
``local`` (one Dask worker), which she shares with the group ``lab``."""

from __future__ import annotations

import os

import pytest
from fedcompute import Client

from tests.auth.oidc import Provider, issuer_entry, write_config
from tests.reliability.helpers import running_stack


@pytest.fixture(scope="package")
def idp():
    provider = Provider(lifetime=6)
    yield provider
    provider.stop()


@pytest.fixture(scope="package")
def idp_opaque():
    provider = Provider(lifetime=6, opaque=True)
    yield provider
    provider.stop()


@pytest.fixture(scope="package")
def auth_stack(tmp_path_factory, idp, idp_opaque):
    home = tmp_path_factory.mktemp("auth")
    config = write_config(home / "oidc.yaml", [issuer_entry(idp), issuer_entry(idp_opaque)])
    with running_stack(home, env={"FEDCOMPUTE_OIDC_CONFIG": config}, workers=1) as stack:
        stack.client().update_endpoint(stack.endpoint_id, shared_with_groups=["lab"])
        yield stack


@pytest.fixture
def no_saved_login(monkeypatch, tmp_path):
    """This process's SDK sees no token in the environment and a fresh FEDCOMPUTE_HOME."""
    for name in ("FEDCOMPUTE_TOKEN", "FEDCOMPUTE_SERVICE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FEDCOMPUTE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def cli_env(stack, home) -> dict:
    """The environment of a user's shell: FEDCOMPUTE_HOME=home, no token, no service URL."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("FEDCOMPUTE_TOKEN", "FEDCOMPUTE_SERVICE_URL")}
    env["FEDCOMPUTE_HOME"] = str(home)
    return env


def alice(stack) -> Client:
    return stack.client()
