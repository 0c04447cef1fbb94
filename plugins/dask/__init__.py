"""Dask on fedcompute endpoints: ``Client(FederatedCluster(endpoint_id=...))``.

The endpoint runs a real Dask scheduler next to its workers; the client reaches it through the
service's websocket relay (``fed://`` / ``feds://`` comms), so endpoints behind firewalls work.
"""

from .cluster import EndpointUnavailable, FederatedCluster, VersionMismatchError, check_versions
from .comm import fed_address

__all__ = ["EndpointUnavailable", "FederatedCluster", "VersionMismatchError", "check_versions",
           "fed_address"]
