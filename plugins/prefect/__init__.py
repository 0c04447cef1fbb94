"""Prefect adapter: ``FederatedTaskRunner`` runs a flow's tasks on a fedcompute endpoint.

``from fedcompute.plugins.prefect import FederatedTaskRunner``. The import of Prefect is lazy,
so that the endpoint side of the adapter (``_remote``) loads in workers without Prefect.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .runner import FederatedTaskRunner

__all__ = ["FederatedTaskRunner"]


def __getattr__(name: str) -> Any:
    if name == "FederatedTaskRunner":
        from .runner import FederatedTaskRunner

        return FederatedTaskRunner
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
