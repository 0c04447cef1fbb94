"""Engines: where an endpoint runs tasks. ``local`` (default) or a batch system."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from .base import Engine

#: engine type -> "module:Class", imported on demand (dask-jobqueue is an optional extra).
ENGINES = {
    "local": "fedcompute.endpoint.engines.local:LocalEngine",
    "slurm": "fedcompute.endpoint.engines.slurm:SLURMEngine",
    "pbs": "fedcompute.endpoint.engines.pbs:PBSEngine",
    "sge": "fedcompute.endpoint.engines.sge:SGEEngine",
    "lsf": "fedcompute.endpoint.engines.lsf:LSFEngine",
    "htcondor": "fedcompute.endpoint.engines.htcondor:HTCondorEngine",
    "oar": "fedcompute.endpoint.engines.oar:OAREngine",
    "moab": "fedcompute.endpoint.engines.moab:MoabEngine",
    "kubernetes": "fedcompute.endpoint.engines.kubernetes:KubernetesEngine",
}

#: Batch systems that are gone: what to use instead.
RETIRED = {
    "cobalt": "Cobalt was retired (ALCF moved its systems to PBS Pro in 2023): "
              "use engine type 'pbs' (dask-jobqueue's PBSCluster), e.g. "
              "{type: pbs, queue: debug, account: myproject, resource_spec: "
              "'select=1:system=polaris'}",
}


def engine_class(kind: str) -> type[Engine]:
    if kind in RETIRED:
        raise ValueError(f"engine type {kind!r}: {RETIRED[kind]}")
    if kind not in ENGINES:
        raise ValueError(f"unknown engine type {kind!r}; choose one of {', '.join(ENGINES)}")
    module, _, cls = ENGINES[kind].partition(":")
    return getattr(importlib.import_module(module), cls)


def get_engine(options: dict[str, Any], workdir: Path,
               container: dict[str, Any] | None = None) -> Engine:
    """The engine named by ``options['type']`` (default ``local``), validated; its workers run
    in ``container`` (the endpoint's ``container:``) when given."""
    options = dict(options or {})
    kind = options.get("type", "local")
    return engine_class(kind)(options, workdir, container=container)


__all__ = ["ENGINES", "RETIRED", "Engine", "engine_class", "get_engine"]
