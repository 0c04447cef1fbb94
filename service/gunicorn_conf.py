"""gunicorn settings for the service: ``gunicorn -c python:fedcompute.service.gunicorn_conf``.

A graceful stop (SIGTERM) waits for requests in flight; the service's long-polls (agents
leasing tasks, SDKs waiting for results) would hold it for up to their 20-30 s wait. This
hook makes them return at once instead: their clients simply poll again.
"""

from __future__ import annotations

import signal
from typing import Any


def post_worker_init(worker: Any) -> None:
    from fedcompute.service.context import stopping

    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: Any) -> None:
        stopping.set()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_term)
