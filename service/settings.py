"""Service settings, from ``FEDCOMPUTE_*`` environment variables with safe defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields


def _env(name: str, default, cast=str):
    raw = os.environ.get(f"FEDCOMPUTE_{name.upper()}")
    return default if raw in (None, "") else cast(raw)


@dataclass
class Settings:
    """Limits, lifetimes and timeouts of the service (each has an env var ``FEDCOMPUTE_<NAME>``)."""

    redis_url: str = ""
    redis_min_replicas: int = 0             # submissions and results: on this many replicas
    redis_wait_timeout: float = 1.0         # seconds to wait for them (else 503: retry)
    max_request_bytes: int = 64 * 1024 * 1024
    max_payload_bytes: int = 10 * 1024 * 1024
    max_function_bytes: int = 10 * 1024 * 1024
    max_output_bytes: int = 1024 * 1024     # live output a task may stream (stream_output)
    max_batch_tasks: int = 20_000
    fanout_threshold: int = 5_000
    task_ttl: int = 14 * 24 * 3600          # unfinished tasks are dropped after this
    result_ttl: int = 7 * 24 * 3600         # finished tasks and results kept this long
    heartbeat_interval: float = 5.0
    heartbeat_timeout: float = 30.0         # silent this long: offline, leases reclaimed
    max_attempts: int = 3                   # endpoint losses before a task fails
    rate_limit: int = 3000                  # requests per window per user token (0 = off)
    rate_window: int = 10
    maintenance_interval: float = 5.0
    max_lease_wait: float = 30.0
    max_result_wait: float = 30.0
    dask_max_comms: int = 2000              # relayed Dask comms at once, all instances
    dask_max_comms_per_user: int = 60       # (a Dask client uses 3)
    relay_internal_host: str = "127.0.0.1"  # where other instances reach this one's relay hops
    oidc_config: str = ""                   # YAML/JSON file of OpenID Connect issuers (oidc.py)

    @classmethod
    def from_env(cls, **overrides) -> Settings:
        values = {}
        for f in fields(cls):
            cast = type(f.default) if f.default is not None else str
            values[f.name] = _env(f.name, f.default, cast)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
