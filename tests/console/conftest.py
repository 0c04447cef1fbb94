"""Fixtures of the console tests.

* ``service``: the service app on a real embedded Valkey (emptied for each test), driven with
  Flask's test client: sessions, CSRF, access rules, escaping, timings.
* ``browser``: a headless Chromium (Debian's ``chromium`` + ``chromium-driver``, through
  selenium) for the tests against the real stack (``fed_stack``); each test's screenshots go
  to ``tests/console/screenshots/``.
"""

from __future__ import annotations

import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from fedcompute.protocol import TaskSpec
from fedcompute.service.app import create_app
from fedcompute.service.auth import issue_user_token
from fedcompute.service.context import EXTENSION
from fedcompute.service.embedded import EmbeddedRedis
from fedcompute.service.settings import Settings
from fedcompute.service.store import Store
from flask import Flask
from flask.testing import FlaskClient

from .browser import Browser

SCREENSHOTS = Path(__file__).with_name("screenshots")
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def new_id() -> str:
    return str(uuid.uuid4())


@dataclass
class Service:
    """The app, its store, and helpers to make users and objects directly in the store."""

    app: Flask
    store: Store

    def user(self, name: str, label: str = "") -> str:
        self.store.create_user(name)
        return issue_user_token(self.store, name, label)

    def endpoint(self, owner: str, name: str = "ep", **sharing) -> str:
        endpoint_id = new_id()
        self.store.put_endpoint(endpoint_id, owner, name, sharing.get("public", False),
                                sharing.get("shared_with", []), None, {},
                                f"credential-{endpoint_id}")
        return endpoint_id

    def function(self, owner: str, name: str = "double") -> str:
        return self.store.put_function(owner, name, f"body of {name}".encode(), new_id(), "",
                                       False, [])

    def group(self, owner: str, endpoint_id: str, function_id: str, n: int,
              batch: int = 5000) -> tuple[str, list[str]]:
        group = new_id()
        ids = [new_id() for _ in range(n)]
        for i in range(0, n, batch):
            self.store.submit(owner, endpoint_id, group, [
                TaskSpec(task_id=t, function_id=function_id, payload=b"args")
                for t in ids[i:i + batch]])
        return group, ids

    def client(self, token: str | None = None) -> FlaskClient:
        """A test client, signed in with ``token`` when given."""
        client = self.app.test_client()
        if token:
            sign_in(client, token)
        return client


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "no CSRF field on the page"
    return found.group(1)


def sign_in(client: FlaskClient, token: str, **environ) -> None:
    form = client.get("/console/login", **environ)
    reply = client.post("/console/login", data={"csrf": csrf_of(form.text), "token": token},
                        **environ)
    assert reply.status_code == 303, reply.text


@pytest.fixture(scope="session")
def valkey(tmp_path_factory):
    with EmbeddedRedis(tmp_path_factory.mktemp("console-valkey")) as server:
        yield server


@pytest.fixture
def service(valkey) -> Service:
    app = create_app(Settings(redis_url=valkey.url))
    store = app.extensions[EXTENSION].store
    store.redis.flushall()
    yield Service(app, store)
    store.stop()  # its wake-up listener (started by long-polls) ends within a second


@pytest.fixture(scope="session")
def screenshots() -> Path:
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir()
    return SCREENSHOTS


@pytest.fixture
def browser(fed_stack, screenshots, tmp_path):
    with Browser(fed_stack.service_url, tmp_path / "chromium", screenshots) as b:
        yield b
