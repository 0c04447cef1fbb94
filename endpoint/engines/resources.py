"""Per-task ``resource_specification`` (as in Globus Compute's Executor) → Dask resources.

A task submitted with ``resource_specification={"GPU": 1, "walltime": 600}`` runs only on a
Dask worker that advertises at least that much of each resource (``dask worker --resources
GPU=1``, set from an engine's ``worker_resources:`` option), and is stopped after ``walltime``.
"""

from __future__ import annotations

import math
import re
from typing import Any

#: Keys Globus Compute's MPI engine uses; they describe a launch, not a Dask resource.
LAUNCH_KEYS = frozenset({"num_nodes", "ranks_per_node", "num_ranks", "launcher_options"})

_RESOURCE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_DURATION = re.compile(r"^(?:(?P<d>\d+)-)?(?P<rest>\d+(?::\d+){0,2})$")


def parse_duration(value: Any, bare_unit: float = 1.0, colon_units: str = "hms") -> float:
    """Seconds in a duration: a number (in ``bare_unit`` seconds), ``"HH:MM:SS"``, ``"MM:SS"``
    (``colon_units="hms"``) or ``"HH:MM"`` (``"hm"``, LSF), Slurm's ``"D-HH[:MM[:SS]]"``,
    or a Dask-style string like ``"90s"``, ``"2h"``."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value) * bare_unit
    else:
        text = str(value).strip()
        match = _DURATION.match(text)
        if match:
            parts = [int(p) for p in match["rest"].split(":")]
            if match["d"] is not None:
                # Slurm's days-hours[:minutes[:seconds]]
                seconds = sum(p * u for p, u in zip(parts, (3600, 60, 1), strict=False))
            elif len(parts) == 1:
                seconds = parts[0] * bare_unit
            elif colon_units == "hm":
                seconds = sum(p * u for p, u in zip(parts, (3600, 60, 1), strict=False))
            else:
                units = {2: (60, 1), 3: (3600, 60, 1)}[len(parts)]
                seconds = sum(p * u for p, u in zip(parts, units, strict=True))
            seconds += int(match["d"] or 0) * 86400
        else:
            from dask.utils import parse_timedelta

            try:
                seconds = float(parse_timedelta(text))
            except (KeyError, ValueError, TypeError, IndexError) as exc:
                raise ValueError(f"not a duration: {value!r}") from exc
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"duration must be positive: {value!r}")
    return seconds


def dask_resources(resource_specification: dict[str, Any] | None) -> dict[str, Any]:
    """Split a task's ``resource_specification`` into Dask worker resources and a walltime.

    ``{"GPU": 1, "MEMORY": 4e9, "walltime": "00:10:00"}`` →
    ``{"resources": {"GPU": 1, "MEMORY": 4e9}, "walltime": 600.0}``. ``resources`` is ``None``
    when the task needs none (any worker will do); ``walltime`` is seconds or ``None``. Launch
    keys of Globus Compute's MPI engine (``num_nodes``, ``ranks_per_node``, ...) are ignored.
    Raises ``ValueError`` naming the bad key for anything else that is not a positive amount.
    """
    spec = dict(resource_specification or {})
    walltime = spec.pop("walltime", None)
    resources: dict[str, float | int] = {}
    for key, amount in spec.items():
        if key in LAUNCH_KEYS:
            continue
        if not isinstance(key, str) or not _RESOURCE_NAME.match(key):
            raise ValueError(f"resource_specification: bad resource name {key!r}")
        if isinstance(amount, bool) or not isinstance(amount, int | float) \
                or not math.isfinite(amount) or amount <= 0:
            raise ValueError(f"resource_specification[{key!r}] must be a positive number, "
                             f"got {amount!r}")
        resources[key] = amount
    return {"resources": resources or None,
            "walltime": parse_duration(walltime) if walltime is not None else None}


def worker_resources_arg(worker_resources: dict[str, Any]) -> list[str]:
    """``{"GPU": 2, "MEM": 1e9}`` → ``["--resources", "GPU=2,MEM=1000000000.0"]`` for
    ``dask worker`` (commas, not spaces: dask-jobqueue joins the command line unquoted)."""
    if not isinstance(worker_resources, dict) or not worker_resources:
        raise ValueError("worker_resources must be a mapping like {GPU: 1}")
    checked = dask_resources(worker_resources)
    if checked["walltime"] is not None:
        raise ValueError("worker_resources: walltime is not a worker resource "
                         "(use the engine's walltime option)")
    return ["--resources", ",".join(f"{k}={v}" for k, v in checked["resources"].items())]
