"""What request handlers share, and how they reach it: the settings, the store, the RQ queue,
the Dask relay, and the process's stop event. Everything in the service reads the app's
context through :func:`fed`, so no module needs the app factory (no import circle)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from flask import current_app

from .settings import Settings
from .store import Store

#: Set when this API process is asked to stop (see ``gunicorn_conf``): long-polls then end
#: within one slice, so a graceful stop never waits out a 20-30 s poll.
stopping = threading.Event()

EXTENSION = "fedcompute"


@dataclass
class FedContext:
    """One per app: ``settings``, ``store``, ``queue`` (RQ, or None) and ``relay``."""

    settings: Settings
    store: Store
    queue: Any = None
    relay: Any = None


def fed() -> FedContext:
    """The context of the app handling the current request."""
    return current_app.extensions[EXTENSION]
