"""Endpoint configuration: ``$FEDCOMPUTE_HOME/endpoints/NAME/config.yaml``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from fedcompute.config import home
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class EndpointConfig(BaseModel):
    """What an endpoint's ``config.yaml`` may say."""

    model_config = ConfigDict(extra="forbid")

    service_url: str | None = Field(None, description="default: the `fedcompute login` service")
    engine: dict[str, Any] = Field(default_factory=lambda: {"type": "local"})
    max_tasks_per_lease: int = Field(2000, ge=1, le=10000)
    max_outstanding: int = Field(20000, ge=1, description="leased tasks not yet finished")
    chunk_target_seconds: float = Field(0.05, gt=0, description="work packed per Dask task")
    max_chunk: int = Field(256, ge=1)
    task_walltime: float | None = Field(None, gt=0, description="seconds, per task")
    max_result_size: int = Field(10 * 1024 * 1024, ge=1)
    allowed_functions: list[str] | None = None
    public: bool = False
    shared_with: list[str] = Field(default_factory=list)
    drain_timeout: float = Field(10.0, ge=0, description="on stop, wait this long for tasks")
    lease_wait: float = Field(20.0, ge=0, le=30)
    result_batch: int = Field(2000, ge=1)
    verify_tls: bool | str = True
    dask_access: bool = Field(
        True, description="users allowed on this endpoint may use it from Dask (FederatedCluster)")
    dask_max_workers: int | None = Field(
        None, ge=0, description="cap on workers a remote Dask scale/adapt may request")
    container: dict[str, Any] | None = Field(
        None, description="run the endpoint's Dask workers in this image: {type: "
                          "podman|docker|podman-hpc|apptainer|singularity, image: NAME, "
                          "options: [...], python: python3}")

    @field_validator("container")
    @classmethod
    def _check_container(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            from .containers import container_spec

            container_spec(value)  # ValueError names the bad key or value
        return value


def endpoints_root() -> Path:
    return home() / "endpoints"


def endpoint_dir(name: str) -> Path:
    return endpoints_root() / name


def config_path(name: str) -> Path:
    return endpoint_dir(name) / "config.yaml"


def load_config(name: str) -> EndpointConfig:
    path = config_path(name)
    if not path.exists():
        raise FileNotFoundError(
            f"endpoint {name!r} is not configured: run `fedcompute endpoint configure {name}`")
    raw = yaml.safe_load(path.read_text()) or {}
    try:
        return EndpointConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{path}: {where}: {first['msg']}") from exc


def credential_path(name: str) -> Path:
    return endpoint_dir(name) / "credential.json"


def load_credential(name: str) -> dict | None:
    path = credential_path(name)
    return json.loads(path.read_text()) if path.exists() else None


def save_credential(name: str, endpoint_id: str, credential: str, service_url: str) -> None:
    path = credential_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"endpoint_id": endpoint_id, "credential": credential,
                               "service_url": service_url}))
    tmp.chmod(0o600)
    tmp.replace(path)
