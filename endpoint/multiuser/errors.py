"""Errors a multi-user endpoint gives a task it cannot run for its submitter.

They reach the submitter as the task's exception. This module imports nothing beyond the
standard library and ``fedcompute.errors``, so that any fedcompute installation (the SDK alone
too) can rebuild them by type.
"""

from __future__ import annotations

from fedcompute.errors import FedComputeError


class IdentityMappingError(FedComputeError, PermissionError):
    """The submitting user has no local account on this endpoint (or may not run as it)."""


class UserConfigError(FedComputeError, ValueError):
    """The task's ``user_endpoint_config`` was refused: the endpoint's schema or its checks
    do not allow it, or the endpoint's template cannot be filled from it."""


class UserProcessError(FedComputeError, RuntimeError):
    """The per-user endpoint process could not be started, or ended while running the task."""


__all__ = ["IdentityMappingError", "UserConfigError", "UserProcessError"]
