"""Multi-user endpoints: one endpoint, run by an administrator (as root), serving many users.

Each task runs as the local account its submitter maps to, in a user process started for
(submitter, ``user_endpoint_config``) from the administrator's Jinja template and stopped when
idle. Modules, one concept each:

============== ==================================================================
module         what
============== ==================================================================
identity       service user -> local account (a table, a table file, regex rules)
template       user_endpoint_config -> checked, schema-validated, rendered config
workdir        users' private work folders (0700, theirs)
protocol       the msgpack frames on the pipe between the manager and a process
processes      the user processes: spawn as the user, feed, follow, stop when idle
dispatcher     the manager's dispatcher: routes leased tasks to user processes
child          the user process program (``python -m fedcompute.endpoint.multiuser.child``)
errors         the typed errors a refused task fails with
starter        ``endpoint configure NAME --multi-user``: the commented starter files
============== ==================================================================

Importing this package is cheap (the submitter's SDK imports ``errors`` to rebuild them).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import IdentityMappingError, UserConfigError, UserProcessError

if TYPE_CHECKING:
    from ..config import EndpointConfig


def agent_parts(config: EndpointConfig, workdir: Path) -> tuple[Any, type]:
    """The engine and dispatcher class an agent uses for a ``multi_user`` config."""
    from .dispatcher import MultiUserDispatcher
    from .processes import UserProcesses

    return UserProcesses(config, workdir), MultiUserDispatcher


__all__ = ["IdentityMappingError", "UserConfigError", "UserProcessError", "agent_parts"]
