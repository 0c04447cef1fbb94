"""The web console, served by the service at ``/console``: server-rendered pages (Jinja,
autoescaped) with one small script for live progress and charts; no frontend build.

============== =====================================================================
``session``     signing in with a token, the session cookie, CSRF, security headers
``filters``     template filters (times, durations, sizes)
``objects``     the object a page is about, found with the access rules
``sharing``     the add/remove/public forms of endpoints and functions
``endpoints``   endpoint list and pages
``groups``      task groups: list, counts, progress, task pages, cancelling a group
``live``        a group's live progress (server-sent events) and its sampled statistics
``tasks``       one task: timeline, result, exception, output; cancelling it
``functions``   functions and their sharing
``tokens``      the user's tokens; revoking one
============== =====================================================================

Every page reads what the REST API would show the same user, through the same rules
(``service.access``): other users' objects answer 404.
"""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("console", __name__, url_prefix="/console", template_folder="templates",
               static_folder="static", static_url_path="/static")

# The page modules add their routes to ``bp`` (imported last: they import ``bp``).
from . import (  # noqa: E402
    endpoints,
    filters,
    functions,
    groups,
    live,
    session,
    tasks,
    tokens,
)

__all__ = ["bp", "endpoints", "filters", "functions", "groups", "live", "session", "tasks",
           "tokens"]
