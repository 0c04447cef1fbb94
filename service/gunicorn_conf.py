"""gunicorn settings for the service: ``gunicorn -c python:fedcompute.service.gunicorn_conf``.

* The gevent worker: a long-poll or a relayed Dask connection is a greenlet, not a thread, so
  one process holds thousands of idle agents (``worker_connections``).
* A graceful stop (SIGTERM) waits for requests in flight; the service's long-polls (agents
  leasing tasks, SDKs waiting for results) would hold it for up to their 20-30 s wait. Here
  they return as soon as the worker starts stopping: their clients simply poll again.
* Each worker process starts its relay hop listener (see ``relay/hop.py``).
* Responses go out head and body in one write (``http_response.py``).
"""

from __future__ import annotations

import threading
import time
from typing import Any

worker_class = "gevent"
worker_connections = 20000
graceful_timeout = 10
keepalive = 75
limit_request_field_size = 16384


def post_fork(server: Any, worker: Any) -> None:
    from fedcompute.service import http_response

    http_response.install()


def post_worker_init(worker: Any) -> None:
    from fedcompute.service.context import EXTENSION

    ctx = worker.wsgi.extensions[EXTENSION]

    def stop_when_told() -> None:
        while worker.alive:
            time.sleep(0.2)
        ctx.store.stop()
        if ctx.relay is not None:
            ctx.relay.stop()

    threading.Thread(target=stop_when_told, daemon=True, name="fedcompute-stop").start()
    if ctx.relay is not None:
        ctx.relay.start(worker.wsgi)
