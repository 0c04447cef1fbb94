"""The API's Redis connection class (``store/connection.py``), on a real Valkey."""

from __future__ import annotations

import select
import time

import pytest
import redis
from fedcompute.service.store import connection


@pytest.fixture
def plain(valkey, monkeypatch):
    """A PlainConnection taking its OS-poll path (as under gevent) on a real server."""
    monkeypatch.setattr(connection, "_os_poll", lambda: select.poll)
    client = connection.connect(valkey.url)
    assert client.connection_pool.connection_class is connection.PlainConnection
    conn = client.connection_pool.get_connection()
    yield conn
    conn.disconnect()
    client.close()


def _until(check, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return False


def test_an_idle_connection_has_nothing_to_read(plain):
    plain.send_command("PING")
    assert plain.read_response() == b"PONG"
    assert plain.can_read() is False


def test_a_stray_reply_is_seen(plain):
    """A reply nobody read (its command gave up) must make the pool replace the connection."""
    plain.send_command("PING")
    assert _until(plain.can_read)
    assert plain.read_response() == b"PONG"
    assert plain.can_read() is False


def test_a_connection_the_server_closed_is_refused(plain, valkey):
    plain.send_command("CLIENT", "ID")
    client_id = plain.read_response()
    redis.Redis.from_url(valkey.url).client_kill_filter(_id=client_id)
    with pytest.raises(redis.ConnectionError):
        assert _until(plain.can_read)


def test_a_tls_url_keeps_redis_pys_own_class():
    tls = connection.connect("rediss://127.0.0.1:1/0")
    assert tls.connection_pool.connection_class is not connection.PlainConnection
