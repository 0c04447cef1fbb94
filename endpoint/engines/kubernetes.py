"""Kubernetes: the endpoint's Dask scheduler and workers as pods, through dask-kubernetes'
operator (``dask_kubernetes.operator.KubeCluster``; the Dask operator must be installed in
the cluster: ``helm install dask-kubernetes-operator dask/dask-kubernetes-operator``).

``engine: {type: kubernetes, image: ..., namespace: ..., resources: {...}, min_workers: 0,
max_workers: 10}``. Options are KubeCluster's own (checked against its signature: a typo gets
"did you mean"), plus fedcompute's ``min_workers`` / ``max_workers`` (the operator's
autoscaler bounds), ``worker_resources`` (Dask resources the workers advertise, matched by
tasks' ``resource_specification``) and ``mpi_launcher``. ``fedcompute endpoint job-script
NAME`` prints the rendered ``DaskCluster`` resource without touching any cluster.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import re
from pathlib import Path
from typing import Any

import yaml

from .base import DASK_CONFIG, Engine
from .resources import worker_resources_arg

#: fedcompute's own options (the rest go to KubeCluster).
ENGINE_OPTIONS = frozenset({"type", "min_workers", "max_workers", "worker_resources",
                            "mpi_launcher"})

#: KubeCluster parameters an endpoint does not pass, and what to use instead.
NOT_OPTIONS = {
    "n_workers": "use min_workers / max_workers",
    "loop": None, "asynchronous": None, "quiet": None,
    "jupyter": "the endpoint serves no notebooks",
    "shutdown_on_close": "the endpoint removes its cluster when it stops",
}

#: Options rendered into the DaskCluster resource (the others configure KubeCluster itself).
SPEC_OPTIONS = ("image", "resources", "env", "worker_command", "scheduler_service_type",
                "idle_timeout")

DEFAULT_IMAGE = "ghcr.io/dask/dask:latest"


def _kube_cluster() -> type:
    try:
        from dask_kubernetes.operator import KubeCluster
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError("engine 'kubernetes' needs dask-kubernetes: "
                          "pip install 'fedcompute[kubernetes]'") from exc
    return KubeCluster


def new_kube_cluster(**kwargs: Any) -> Any:
    """``KubeCluster(**kwargs)``: creates the DaskCluster resource and waits for its
    scheduler."""
    return _kube_cluster()(**kwargs)


def known_options() -> set[str]:
    params = inspect.signature(_kube_cluster().__init__).parameters.values()
    names = {p.name for p in params if p.kind is p.KEYWORD_ONLY}
    return (names - set(NOT_OPTIONS)) | ENGINE_OPTIONS


def cluster_name(workdir: Path | None) -> str:
    """A DNS-1123 name for the DaskCluster: ``fedcompute-<endpoint folder>``."""
    base = f"fedcompute-{Path(workdir).name}" if workdir else "fedcompute"
    name = re.sub(r"[^a-z0-9-]+", "-", base.lower()).strip("-")
    return name[:50].rstrip("-") or "fedcompute"


class KubernetesEngine(Engine):
    """A Dask cluster in Kubernetes, made by the Dask operator and scaled by its autoscaler
    between ``min_workers`` and ``max_workers``."""

    name = "kubernetes"

    def __init__(self, options: dict[str, Any], workdir: Path,
                 container: dict[str, Any] | None = None):
        if container:
            raise ValueError("engine 'kubernetes' runs its workers in pods of the engine's "
                             "image: set engine: {image: ...} instead of container:")
        self.validate(options)
        super().__init__(options, workdir)
        self.min_workers = self._count("min_workers", 0)
        self.max_workers = self._count("max_workers", max(1, self.min_workers))
        if self.min_workers > self.max_workers:
            raise ValueError(f"engine 'kubernetes': min_workers ({self.min_workers}) > "
                             f"max_workers ({self.max_workers})")
        self.spec = self.cluster_spec()

    @staticmethod
    def validate(options: dict[str, Any]) -> None:
        """``ValueError`` naming the first unknown or badly typed option."""
        known = known_options()
        for key in options:
            if key in known:
                continue
            hint = NOT_OPTIONS.get(key)
            if not hint:
                close = difflib.get_close_matches(str(key), sorted(known), n=3, cutoff=0.6)
                hint = (f"did you mean {' or '.join(map(repr, close))}?" if close
                        else f"known options: {', '.join(sorted(known))}")
            raise ValueError(f"engine 'kubernetes': unknown option {key!r}; {hint}")
        for key in ("resources", "custom_cluster_spec"):
            if key in options and not isinstance(options[key], dict | str):
                raise ValueError(f"engine 'kubernetes': {key} must be a mapping")
        if "env" in options and not isinstance(options["env"], dict | list):
            raise ValueError("engine 'kubernetes': env must be a mapping of names to values")

    def _count(self, key: str, default: int) -> int:
        value = self.options.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"engine 'kubernetes': {key} must be an integer >= 0, "
                             f"got {value!r}")
        return value

    def cluster_spec(self) -> dict[str, Any]:
        """The ``DaskCluster`` resource the operator is given (nothing is contacted)."""
        from dask_kubernetes.operator import make_cluster_spec

        opts = self.options
        custom = opts.get("custom_cluster_spec")
        if isinstance(custom, str):
            spec = yaml.safe_load(Path(custom).expanduser().read_text())
        elif isinstance(custom, dict):
            spec = copy.deepcopy(custom)
        else:
            command = opts.get("worker_command") or ["dask", "worker"]
            if isinstance(command, str):
                command = command.split()
            if opts.get("worker_resources"):
                command = [*command, *worker_resources_arg(opts["worker_resources"])]
            spec = make_cluster_spec(
                name=opts.get("name") or cluster_name(self.workdir),
                image=opts.get("image") or DEFAULT_IMAGE, n_workers=self.min_workers,
                resources=opts.get("resources"), env=opts.get("env"), worker_command=command,
                scheduler_service_type=opts.get("scheduler_service_type", "ClusterIP"),
                idle_timeout=opts.get("idle_timeout", 0))
        # Deep copies: make_cluster_spec shares one resources mapping between scheduler and
        # worker (YAML would print it as an alias).
        spec = copy.deepcopy(spec)
        try:
            worker = spec["spec"]["worker"]["spec"]["containers"][0]
        except (KeyError, IndexError, TypeError) as exc:
            raise ValueError("engine 'kubernetes': custom_cluster_spec has no "
                             "spec.worker.spec.containers[0]") from exc
        env = worker.get("env") or []
        extra = {"DASK_" + k.upper().replace(".", "__").replace("-", "_"): str(v)
                 for k, v in DASK_CONFIG.items() if k.startswith("distributed.worker.")}
        extra.update(self.worker_env())
        have = {e.get("name") for e in env}
        worker["env"] = env + [{"name": k, "value": v} for k, v in extra.items()
                               if k not in have]
        return spec

    def job_script(self) -> str:
        """The rendered ``DaskCluster`` as YAML (what ``fedcompute endpoint job-script``
        prints)."""
        return yaml.dump(self.spec, Dumper=_NoAliases, sort_keys=False)

    def make_cluster(self):
        kwargs = {k: v for k, v in self.options.items()
                  if k not in ENGINE_OPTIONS and k not in SPEC_OPTIONS
                  and k not in ("custom_cluster_spec", "name")}
        cluster = new_kube_cluster(custom_cluster_spec=self.spec, shutdown_on_close=True,
                                   **kwargs)
        cluster.adapt(minimum=self.min_workers, maximum=self.max_workers)
        return cluster

    def status(self) -> dict[str, Any]:
        return {**super().status(), "min_workers": self.min_workers,
                "max_workers": self.max_workers, "cluster": self.spec["metadata"]["name"]}


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True
