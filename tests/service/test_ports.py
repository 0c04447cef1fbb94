"""A port the service chose for itself may be taken by another process before it binds it
(CI saw a stack fail to start this way): the first start then picks another one."""

from __future__ import annotations

import socket

import redis
from fedcompute.service import embedded, server


def _held_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_embedded_valkey_moves_off_a_port_taken_before_it_binds(tmp_path, monkeypatch):
    with _held_port() as taken:
        port = taken.getsockname()[1]
        real = embedded.free_port
        offered = iter([port])
        monkeypatch.setattr(embedded, "free_port", lambda **kw: next(offered, None) or real(**kw))
        with embedded.EmbeddedRedis(tmp_path) as server_:
            assert server_.port != port
            assert redis.Redis.from_url(server_.url).ping()


def test_embedded_valkey_keeps_a_port_it_was_given(tmp_path):
    with _held_port() as taken:
        port = taken.getsockname()[1]
        try:
            embedded.EmbeddedRedis(tmp_path, port=port).start()
        except embedded.PortTaken as exc:
            assert str(port) in str(exc)
        else:
            raise AssertionError("a given port is never swapped for another")


def test_service_api_moves_off_a_port_taken_before_it_binds(tmp_path, monkeypatch):
    with _held_port() as taken:
        port = taken.getsockname()[1]
        monkeypatch.setattr(server, "free_port", lambda **kw: port)
        svc = server.Service(port=0, data_dir=tmp_path)
        assert svc.port == port
        monkeypatch.setattr(server, "free_port", embedded.free_port)
        svc.start()
        try:
            assert svc.port != port
            import httpx

            assert httpx.get(f"{svc.url}/v1/version").status_code == 200
        finally:
            svc.stop()
