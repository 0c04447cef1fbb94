"""What the SDK checks at its first use of an endpoint, before any task goes to it.

* The versions that decide whether a pickled function runs there (Python and cloudpickle minor
  versions, fedcompute's major.minor), as the endpoint last reported them: a mismatch raises
  :class:`~fedcompute.errors.VersionMismatchError` naming each version (or warns, with
  ``check_versions="warn"``), instead of failing every task later with an unpickling error.
* Whether the endpoint has been offline for longer than ``offline_after`` seconds: the tasks
  would only wait, so the user hears of it at once (a warning; the tasks are still sent).

One status request per endpoint per executor; an endpoint that never reported its versions
(it has not connected yet), or whose status this user may not read, is not compared.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from typing import Any, Literal

from . import errors
from .versions import TASK_RULES, mismatches, versions

log = logging.getLogger(__name__)

#: A task's function runs only where these agree (leading version parts).
RULES = {**TASK_RULES, "fedcompute": 2}

CheckVersions = bool | Literal["warn"]


class EndpointOfflineWarning(UserWarning):
    """Tasks were submitted to an endpoint that has been offline for a while: they wait."""


def local_versions() -> dict[str, str]:
    from . import __version__

    return {**versions("cloudpickle"), "fedcompute": __version__}


class EndpointCheck:
    """The first-use check of each endpoint an executor submits to (thread-safe, once each)."""

    def __init__(self, client: Any, check_versions: CheckVersions = True,
                 offline_after: float | None = 300.0):
        if check_versions not in (True, False, "warn"):
            raise ValueError('check_versions must be True, False or "warn"')
        self.client = client
        self.check_versions = check_versions
        self.offline_after = offline_after
        self._checked: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, endpoint_id: str) -> None:
        if endpoint_id in self._checked or (not self.check_versions
                                            and self.offline_after is None):
            return
        with self._lock:
            if endpoint_id in self._checked:
                return
            self._check(endpoint_id)
            self._checked.add(endpoint_id)

    def _check(self, endpoint_id: str) -> None:
        try:
            status = self.client.get_endpoint_status(endpoint_id)
        except (errors.ForbiddenError, errors.NotFoundError, errors.ServiceError) as exc:
            # The submission itself says what is wrong with the endpoint, if anything is.
            log.debug("no status for endpoint %s: %s", endpoint_id, exc)
            return
        reported = (status.get("details") or {}).get("versions") or {}
        if self.check_versions and reported:
            problems = mismatches(local_versions(), reported, RULES)
            if problems:
                message = (f"endpoint {endpoint_id} cannot run this SDK's functions; "
                           "versions (client, endpoint):\n" + "\n".join(problems))
                if self.check_versions == "warn":
                    warnings.warn(message, errors.VersionMismatchWarning, stacklevel=4)
                else:
                    raise errors.VersionMismatchError(message)
        seen = status.get("last_heartbeat")
        if (self.offline_after is not None and status.get("status") != "online"
                and seen and time.time() - float(seen) > self.offline_after):
            warnings.warn(
                f"endpoint {endpoint_id} has been offline for "
                f"{(time.time() - float(seen)) / 60:.0f} min: its tasks wait until it connects",
                EndpointOfflineWarning, stacklevel=4)
