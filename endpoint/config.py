"""Endpoint configuration: ``$FEDCOMPUTE_HOME/endpoints/NAME/config.yaml``."""

from __future__ import annotations

import json
import re
import string
from pathlib import Path
from typing import Any

import yaml
from fedcompute.config import home
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)


class IdentityRule(BaseModel):
    """One regex rule of a multi-user endpoint's identity mapping: a service user name that
    fully matches ``match`` runs as the local account ``output`` (``{0}``, ``{1}``...: the
    regex's groups; ``{name}``: a named group; ``{username}``: the whole service user name)."""

    model_config = ConfigDict(extra="forbid")

    match: str
    output: str = "{0}"

    @model_validator(mode="after")
    def _check(self) -> IdentityRule:
        try:
            pattern = re.compile(self.match)
        except re.error as exc:
            raise ValueError(f"match {self.match!r} is not a regular expression: {exc}") from None
        fields = [f for _, f, _, _ in string.Formatter().parse(self.output) if f is not None]
        for name in fields:
            if name.isdigit() and int(name) >= pattern.groups:
                raise ValueError(f"output {self.output!r} uses group {{{name}}} but match "
                                 f"{self.match!r} has {pattern.groups} group(s)")
            if not name.isdigit() and name != "username" and name not in pattern.groupindex:
                raise ValueError(f"output {self.output!r}: {{{name}}} is neither a group of "
                                 f"{self.match!r} nor {{username}}")
        return self


class IdentityMapping(BaseModel):
    """Which local account runs a service user's tasks: ``table`` first, then the table in
    ``table_file`` (YAML/JSON ``{service user: local account}``, reread when it changes), then
    ``rules`` in order. No match: the task fails with a PermissionError."""

    model_config = ConfigDict(extra="forbid")

    table: dict[str, str] = Field(default_factory=dict)
    table_file: str | None = Field(None, description="relative to the endpoint folder")
    rules: list[IdentityRule] = Field(default_factory=list)


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
    shared_with_groups: list[str] | None = Field(
        None, description="identity-provider groups whose members may use it (None: leave "
                          "as set through the API)")
    drain_timeout: float = Field(10.0, ge=0, description="on stop, wait this long for tasks")
    fail_after_job_refusals: float = Field(
        300.0, ge=0, description="batch engines: when the batch system has refused every job "
                                 "for this long and no worker is up, the tasks waiting for one "
                                 "fail with JobSubmissionFailed (its error); 0: never")
    lease_wait: float = Field(20.0, ge=0, le=30)
    result_batch: int = Field(2000, ge=1)
    verify_tls: bool | str = True
    fast_lane: bool = Field(
        True, description="short tasks go to executor processes on the workers, without a "
                          "Dask task each (tasks with resources or launchers keep Dask)")
    dask_access: bool = Field(
        True, description="users allowed on this endpoint may use it from Dask (FederatedCluster)")
    dask_max_workers: int | None = Field(
        None, ge=0, description="cap on workers a remote Dask scale/adapt may request")
    container: dict[str, Any] | None = Field(
        None, description="run the endpoint's Dask workers in this image: {type: "
                          "podman|docker|podman-hpc|apptainer|singularity, image: NAME, "
                          "options: [...], python: python3}")

    # --- multi-user endpoints (issue 15; README "Multi-user endpoints") ---------------------
    multi_user: bool = Field(
        False, description="run each user's tasks as their mapped local account, in a "
                           "per-user process whose engine comes from user_config_template")
    identity_mapping: IdentityMapping | None = None
    user_config_template: str = Field(
        "user_config_template.yaml.j2",
        description="Jinja template of a user process's config (relative to the endpoint "
                    "folder), filled from the task's user_endpoint_config")
    user_config_schema: str | None = Field(
        "user_config_schema.json",
        description="JSON schema user_endpoint_config must satisfy (relative to the endpoint "
                    "folder); null: only the built-in checks")
    idle_timeout: float = Field(300.0, gt=0,
                                description="seconds a user process may idle before it stops")
    max_user_processes: int = Field(
        4, ge=1, description="per service user: processes (distinct user_endpoint_configs)")
    user_work_root: str | None = Field(
        None, description="where users' private work folders are made (default: the "
                          "endpoint folder's users/); its folders must be searchable by them")
    user_environment: dict[str, str] = Field(
        default_factory=dict, description="environment variables of every user process")

    @model_validator(mode="after")
    def _check_multi_user(self) -> EndpointConfig:
        if self.multi_user:
            if self.identity_mapping is None:
                raise ValueError("multi_user endpoints need identity_mapping (table, "
                                 "table_file or rules)")
            # A Dask client could run any code in the manager's (root's) processes.
            self.dask_access = False
        return self

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
