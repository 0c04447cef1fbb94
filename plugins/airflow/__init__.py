"""Airflow adapter: run Airflow tasks on fedcompute endpoints.

``RemoteFunctionOperator`` / ``RemoteShellOperator`` submit through a ``FederatedComputeHook``
(connection type ``fedcompute``) and wait in the worker or, deferred, in a ``RemoteTaskTrigger``.

Names are imported lazily: Airflow loads ``provider.py`` from this package while it is still
reading its configuration, before ``airflow.sdk`` can be imported.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .hooks import FederatedComputeHook
    from .operators import RemoteFunctionOperator, RemoteShellOperator
    from .triggers import RemoteTaskTrigger

_EXPORTS = {
    "FederatedComputeHook": "hooks",
    "RemoteFunctionOperator": "operators",
    "RemoteShellOperator": "operators",
    "RemoteTaskTrigger": "triggers",
}

__all__ = [
    "FederatedComputeHook", "RemoteFunctionOperator", "RemoteShellOperator", "RemoteTaskTrigger",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
