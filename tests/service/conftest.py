"""A Store on a real embedded Valkey, emptied for each test."""

from __future__ import annotations

import uuid

import pytest
from fedcompute.protocol import TaskSpec
from fedcompute.service.embedded import EmbeddedRedis
from fedcompute.service.settings import Settings
from fedcompute.service.store import Store


@pytest.fixture(scope="session")
def valkey(tmp_path_factory):
    with EmbeddedRedis(tmp_path_factory.mktemp("valkey")) as server:
        yield server


@pytest.fixture
def store(valkey):
    settings = Settings(redis_url=valkey.url, heartbeat_timeout=5.0, max_attempts=2)
    store = Store(valkey.url, settings)
    store.redis.flushall()
    yield store
    store.stop()
    store.redis.close()


def new_id() -> str:
    return str(uuid.uuid4())


def tasks(n: int, function_id: str | None = None) -> list[TaskSpec]:
    fid = function_id or new_id()
    return [TaskSpec(task_id=new_id(), function_id=fid, payload=f"args {i}".encode())
            for i in range(n)]


@pytest.fixture
def endpoint(store) -> str:
    """A registered endpoint of user alice."""
    endpoint_id = new_id()
    store.create_user("alice")
    store.put_endpoint(endpoint_id, "alice", "ep", False, [], None, {}, "credential-hash")
    return endpoint_id
