"""The Flask app factory."""

from __future__ import annotations

import logging
from typing import Any

import redis
from flask import Flask, Response, request
from rq import Queue
from werkzeug.exceptions import HTTPException, InternalServerError

from . import console, relay
from .api import agent, endpoints, functions, meta, tasks
from .api.wire import reply
from .auth import RateLimited
from .context import EXTENSION, FedContext, stopping
from .settings import Settings
from .store import Store
from .store.scripts import NotReplicated
from .worker import QUEUE

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, **overrides: Any) -> Flask:
    """Build the service app. ``FEDCOMPUTE_REDIS_URL`` (or ``redis_url=``) names the Redis."""
    settings = settings or Settings.from_env(**overrides)
    if not settings.redis_url:
        raise RuntimeError("no Redis configured: set FEDCOMPUTE_REDIS_URL "
                           "(`fedcompute service start` starts an embedded one)")
    app = Flask("fedcompute.service")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.sort_keys = False
    store = Store(settings.redis_url, settings, stopping)
    app.extensions[EXTENSION] = FedContext(settings, store, Queue(QUEUE, connection=store.redis),
                                           relay.Relay.from_settings(settings, store))
    for module in (meta, functions, endpoints, tasks, agent, relay, console):
        app.register_blueprint(module.bp)
    _register_errors(app)
    return app


def _drain_body(limit: int) -> None:
    """Read (and drop) an oversized body that was refused unread. Closing the connection with
    unread data makes the kernel reset it, and the client would see "connection reset" instead
    of the 413 and its message. Bodies past a few times the limit are not worth reading."""
    length = request.content_length
    if not length or length > 4 * limit + (64 << 20):
        return
    stream = request.environ.get("wsgi.input")
    left = length
    try:
        while left > 0 and stream is not None:
            chunk = stream.read(min(left, 1 << 20))
            if not chunk:
                break
            left -= len(chunk)
    except OSError:
        pass  # the client gave up


def _register_errors(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        code = exc.code or 500
        message = exc.description or exc.name
        headers = {}
        if code == 413 and "the limit is" not in message:  # werkzeug's own says no number
            message = (f"request body too large: the limit is "
                       f"{app.config['MAX_CONTENT_LENGTH']} bytes (max_request_bytes)")
            _drain_body(app.config["MAX_CONTENT_LENGTH"])
            headers["Connection"] = "close"
        if isinstance(exc, RateLimited):
            headers["Retry-After"] = str(exc.retry_after)
        if code == 405:
            headers["Allow"] = ", ".join(exc.valid_methods or [])  # type: ignore[attr-defined]
        if code == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return reply({"error": exc.name.lower().replace(" ", "_"), "message": message}, code,
                     headers)

    @app.errorhandler(redis.ConnectionError)
    @app.errorhandler(redis.TimeoutError)
    @app.errorhandler(NotReplicated)
    def redis_unavailable(exc: Exception) -> Response:
        # Redis restarting (or loading its append-only file): a temporary condition that
        # clients retry, not an internal error.
        log.warning("Redis unavailable on %s %s: %s", request.method, request.path, exc)
        return reply({"error": "service_unavailable",
                      "message": "the service's database is unavailable for a moment; retry"},
                     503, {"Retry-After": "1"})

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        # Never echo internals (or tokens) back; log with the request line only.
        log.exception("unhandled error on %s %s", request.method, request.path)
        err = InternalServerError()
        return reply({"error": "internal_server_error", "message": err.description}, 500)
