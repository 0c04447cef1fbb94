"""Connecting to the service's Redis: a plain URL, or Sentinel-managed for failover.

``redis://[:password@]host:port/db`` (``rediss://`` for TLS) is one server.
``redis+sentinel://[:password@]host1:port1,host2:port2/<master>/<db>`` asks those Sentinels
for the current primary of ``<master>`` and follows failovers: after one, the next command
reconnects to the new primary (the one in flight fails and its request answers 503, which
clients retry). ``?sentinel_password=...`` if the Sentinels want one of their own.
"""

from __future__ import annotations

import select
import sys
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.sentinel import Sentinel

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")


def _os_poll() -> Any:
    """The operating system's ``select.poll`` when gevent replaced it (the API's workers)."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("select"):
        return monkey.get_original("select", "poll")
    return None


class PlainConnection(redis.Connection):
    """A TCP connection whose pool check stays off gevent's hub.

    The pool asks ``can_read()`` of every connection it hands out (a stray reply left on it
    means it must be replaced). Under gevent ``select.poll`` is gevent's, and even a poll that
    does not wait goes through the hub: 5 % of an API process's CPU on a single task's path.
    A zero-timeout poll never blocks, so the real one is asked first; only a socket with
    something to read (rare: a reply that came after its command gave up) takes the usual
    way."""

    def can_read(self, timeout: float = 0) -> bool:
        poll = _os_poll() if not timeout else None
        reader = getattr(self._parser, "_reader", None)
        if poll is None or self._sock is None or reader is None or reader.has_data():
            return super().can_read(timeout)
        poller = poll()
        poller.register(self._sock.fileno(), select.POLLIN)
        return bool(poller.poll(0)) and super().can_read(timeout)


def is_sentinel(url: str) -> bool:
    return urlsplit(url).scheme in SENTINEL_SCHEMES


def parse_sentinel_url(url: str) -> dict[str, Any]:
    """The parts of a ``redis+sentinel://`` URL (ValueError with the reason if malformed)."""
    parts = urlsplit(url)
    if parts.scheme not in SENTINEL_SCHEMES:
        raise ValueError(f"not a Sentinel URL: {url!r}")
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    password = unquote(userinfo.partition(":")[2]) if userinfo else None
    hosts = []
    for item in filter(None, hostlist.split(",")):
        host, _, port = item.rpartition(":") if item.count(":") == 1 else (item, "", "")
        hosts.append((host or item, int(port or 26379)))
    path = [p for p in parts.path.split("/") if p]
    if not hosts or not path:
        raise ValueError("a Sentinel URL is redis+sentinel://[:password@]host:port[,host:port...]"
                         f"/<master>[/<db>]; got {url!r}")
    query = parse_qs(parts.query)
    return {"hosts": hosts, "master": path[0], "db": int(path[1]) if len(path) > 1 else 0,
            "password": password, "ssl": parts.scheme.startswith("rediss"),
            "sentinel_password": (query.get("sentinel_password") or [None])[0]}


def connect(url: str, *, pool_timeout: float = 20.0, **options: Any) -> redis.Redis:
    """A client of the service's Redis at ``url`` (see the module docstring). With
    ``max_connections``, a request finding them all in use waits up to ``pool_timeout``
    seconds for one, rather than failing ("Too many connections": seen when 1,000 agents
    connected at once)."""
    if not is_sentinel(url):
        if urlsplit(url).scheme == "redis":
            options.setdefault("connection_class", PlainConnection)
        if "max_connections" in options:
            pool = redis.BlockingConnectionPool.from_url(url, timeout=pool_timeout, **options)
            return redis.Redis(connection_pool=pool)
        return redis.Redis.from_url(url, **options)
    spec = parse_sentinel_url(url)
    sentinel_options = {k: v for k, v in options.items()
                        if k in ("socket_timeout", "socket_connect_timeout")}
    if spec["sentinel_password"]:
        sentinel_options["password"] = spec["sentinel_password"]
    sentinel = Sentinel(spec["hosts"], sentinel_kwargs=sentinel_options)
    return sentinel.master_for(spec["master"], db=spec["db"], password=spec["password"],
                               ssl=spec["ssl"], **options)
