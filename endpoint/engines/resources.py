"""Per-task ``resource_specification`` (as in Globus Compute's Executor) → Dask resources.

A task submitted with ``resource_specification={"GPU": 1, "walltime": 600}`` runs only on a
Dask worker that advertises at least that much of each resource (``dask worker --resources
GPU=1``, set from an engine's ``worker_resources:`` option), and is stopped after ``walltime``.
As Globus Compute hands its engine the keys it does not know, so do we: launch keys of MPI
engines (``num_nodes``, ...), ``priority`` and any key with a non-numeric value are *options*
for the engine, passed through; only numeric values are resource amounts, checked here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from typing import Any

#: Keys Globus Compute's MPI engine uses; they describe a launch, not a Dask resource.
LAUNCH_KEYS = frozenset({"num_nodes", "ranks_per_node", "num_ranks", "launcher_options"})
#: ``{"fast_lane": False}``: run the task as a Dask task, never on the endpoint's fast lane.
FAST_LANE_KEY = "fast_lane"
#: Keys that are engine options, not resource amounts (Parsl's HTEX has ``priority``).
OPTION_KEYS = LAUNCH_KEYS | {"priority", FAST_LANE_KEY}

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


def dask_resources(resource_specification: dict[str, Any] | None, *,
                   resource_names: Collection[str] = (), strict: bool = False) -> dict[str, Any]:
    """Split a task's ``resource_specification`` into Dask worker resources, a walltime and
    engine options.

    ``{"GPU": 1, "MEMORY": 4e9, "walltime": "00:10:00", "num_nodes": 2, "queue": "debug"}`` →
    ``{"resources": {"GPU": 1, "MEMORY": 4e9}, "walltime": 600.0,
    "options": {"num_nodes": 2, "queue": "debug"}}``. ``resources`` is ``None`` when the task
    needs none (any worker will do), ``walltime`` is seconds or ``None``, ``options`` (``None``
    when empty) holds what the engine decides on: the keys in ``OPTION_KEYS`` and every key
    whose value is not a number. A number is a resource amount; ``ValueError`` names the key
    when it is not positive and finite, when its name is not a resource name, or when it is a
    number written as a string (``"GPU": "1"``). Keys in ``resource_names`` (the resources
    this endpoint's workers advertise) must be amounts; with ``strict`` (a worker's own
    resources) every key must be.
    """
    spec = dict(resource_specification or {})
    walltime = spec.pop("walltime", None)
    resources: dict[str, float | int] = {}
    options: dict[str, Any] = {}
    for key, amount in spec.items():
        if not isinstance(key, str):
            raise ValueError(f"resource_specification: bad key {key!r} (keys are strings)")
        numeric = isinstance(amount, int | float) and not isinstance(amount, bool)
        if not strict and (key in OPTION_KEYS or not (numeric or key in resource_names
                                                      or _numeric_text(amount))):
            options[key] = amount
            continue
        if not _RESOURCE_NAME.match(key):
            raise ValueError(f"resource_specification: bad resource name {key!r}")
        if not numeric or not math.isfinite(amount) or amount <= 0:
            raise ValueError(f"resource_specification[{key!r}] must be a positive number, "
                             f"got {amount!r}")
        resources[key] = amount
    _check_launch(options)
    return {"resources": resources or None,
            "walltime": parse_duration(walltime) if walltime is not None else None,
            "options": options or None}


def _check_launch(options: dict[str, Any]) -> None:
    """MPI launch keys and ``container`` (issue 15): bad values fail the task at dispatch,
    with the message the runner would give later."""
    from ..containers import container_spec
    from ..launchers import mpi_request

    mpi_request(options)
    if options.get("container") is not None:
        container_spec(options["container"], "resource_specification['container']")


def _numeric_text(value: Any) -> bool:
    """``"1"``, ``" 2.5 "``: an amount written as a string, almost surely meant as one."""
    if not isinstance(value, str):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


def worker_resources_arg(worker_resources: dict[str, Any]) -> list[str]:
    """``{"GPU": 2, "MEM": 1e9}`` → ``["--resources", "GPU=2,MEM=1000000000.0"]`` for
    ``dask worker`` (commas, not spaces: dask-jobqueue joins the command line unquoted)."""
    if not isinstance(worker_resources, dict) or not worker_resources:
        raise ValueError("worker_resources must be a mapping like {GPU: 1}")
    checked = dask_resources(worker_resources, strict=True)
    if checked["walltime"] is not None:
        raise ValueError("worker_resources: walltime is not a worker resource "
                         "(use the engine's walltime option)")
    return ["--resources", ",".join(f"{k}={v}" for k, v in checked["resources"].items())]
