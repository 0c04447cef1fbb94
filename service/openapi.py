"""The OpenAPI 3.1 document of the service, generated from the protocol schemas."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from fedcompute import __version__
from fedcompute import protocol as p
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

V = f"/{p.API_VERSION}"
_REF = "#/components/schemas/{model}"


def _ref(model: type[BaseModel] | None) -> dict:
    return {"$ref": _REF.format(model=model.__name__)} if model else {}


def _content(schema: dict) -> dict:
    return {p.JSON: {"schema": schema}, p.MSGPACK: {"schema": schema}}


def _op(summary: str, *, body: type[BaseModel] | None = None, ok: Any = None, status: str = "200",
        params: list[dict] | None = None, auth: str = "user", errors: tuple = ()) -> dict:
    op: dict[str, Any] = {"summary": summary, "responses": {}}
    if isinstance(ok, type) and issubclass(ok, BaseModel):
        ok = _ref(ok)
    op["responses"][status] = {"description": "success", "content": _content(ok or {})}
    if status == "201" and body is p.TaskBatch:
        op["responses"]["202"] = {"description": "accepted; written by a background worker",
                                  "content": _content(ok or {})}
    codes = {"400", "401", "403", "404", "413", "415", "429", "503", *errors}
    if auth == "none":
        codes -= {"401", "403", "429"}
    if body is None:
        codes -= {"413", "415"}
    for code in sorted(codes):
        op["responses"][code] = {"description": "error",
                                 "content": _content(_ref(p.ErrorBody))}
    if body is not None:
        op["requestBody"] = {"required": True, "content": _content(_ref(body))}
    if params:
        op["parameters"] = params
    if auth != "none":
        op["security"] = [{"bearer": []}]
    return op


def _path(name: str, what: str) -> dict:
    return {"name": name, "in": "path", "required": True, "description": what,
            "schema": {"type": "string", "format": "uuid"}}


def _query(name: str, schema: dict) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema}


@lru_cache(maxsize=1)
def openapi_document() -> dict:
    models = [p.FunctionRegistration, p.FunctionInfo, p.SharingUpdate, p.EndpointRegistration,
              p.EndpointRegistered, p.EndpointInfo, p.EndpointStatus, p.TaskBatch,
              p.BatchAccepted, p.TaskRecord, p.TaskIds, p.TaskRecords, p.ResultPage,
              p.GroupTasks, p.AgentHello, p.AgentConfig, p.LeaseRequest, p.Lease, p.ResultBatch,
              p.ResultsStored, p.Heartbeat, p.TaskStateUpdate, p.TaskOutput, p.Release,
              p.ErrorBody]
    _, top = models_json_schema([(m, "validation") for m in models],
                                ref_template=_REF)
    schemas = top.get("$defs", {})
    _describe_base64(schemas)
    for extra in ("FunctionRef", "Deleted", "Version", "Identity", "Updated", "Released",
                  "CancelReply"):
        schemas.setdefault(extra, {"type": "object"})
    schemas["FunctionRef"] = {"type": "object", "required": ["function_id"],
                              "properties": {"function_id": {"type": "string"}}}
    fid, eid = _path("function_id", "function id"), _path("endpoint_id", "endpoint id")
    tid, gid = _path("task_id", "task id"), _path("group", "task group id")
    obj = {"type": "object"}
    paths = {
        "/openapi.json": {"get": _op("This document", auth="none", ok=obj, params=[])},
        f"{V}/version": {"get": _op("Service version", auth="none", ok=obj)},
        f"{V}/whoami": {"get": _op("Who the token belongs to", ok=obj)},
        f"{V}/functions": {"post": _op("Register a function (same body, same id)",
                                       body=p.FunctionRegistration, ok=_ref_name("FunctionRef"),
                                       status="201")},
        f"{V}/functions/{{function_id}}": {
            "get": _op("Describe a function", ok=p.FunctionInfo, params=[fid]),
            "patch": _op("Share a function", body=p.SharingUpdate, ok=p.FunctionInfo,
                         params=[fid]),
            "delete": _op("Delete a function", ok=obj, params=[fid]),
        },
        f"{V}/endpoints": {
            "post": _op("Register an endpoint; returns its credential",
                        body=p.EndpointRegistration, ok=p.EndpointRegistered, status="201"),
            "get": _op("Endpoints you own (role=owner) or may use (role=any, the default)",
                       ok={"type": "array", "items": _ref(p.EndpointInfo)},
                       params=[_query("role", {"type": "string", "enum": ["owner", "any"]})]),
        },
        f"{V}/endpoints/{{endpoint_id}}": {
            "get": _op("Describe an endpoint", ok=p.EndpointInfo, params=[eid]),
            "patch": _op("Change sharing or allowed functions", body=p.SharingUpdate,
                         ok=p.EndpointInfo, params=[eid]),
            "delete": _op("Delete an endpoint", ok=obj, params=[eid]),
        },
        f"{V}/endpoints/{{endpoint_id}}/status": {
            "get": _op("Liveness and load of an endpoint", ok=p.EndpointStatus, params=[eid])},
        f"{V}/tasks": {"post": _op("Submit a batch of tasks", body=p.TaskBatch,
                                   ok=p.BatchAccepted, status="201", errors=("409",))},
        f"{V}/tasks/get": {"post": _op("Status and results of many tasks", body=p.TaskIds,
                                       ok=p.TaskRecords)},
        f"{V}/auth/config": {"get": _op("How to sign in: OpenID Connect issuers and client ids",
                                        auth="none", ok=obj)},
        f"{V}/tasks/cancel": {"post": _op("Cancel many tasks; their states afterwards",
                                          body=p.TaskIds, ok=obj)},
        f"{V}/tasks/{{task_id}}": {"get": _op("Status and result of a task", ok=p.TaskRecord,
                                              params=[tid])},
        f"{V}/tasks/{{task_id}}/cancel": {"post": _op("Cancel a task that has not started",
                                                      ok=obj, params=[tid])},
        f"{V}/task_groups/{{group}}": {"get": _op("Task ids of a task group", ok=p.GroupTasks,
                                                  params=[gid])},
        f"{V}/task_groups/{{group}}/cancel": {"post": _op(
            "Cancel every unfinished task of a group (running ones too)", ok=obj,
            params=[gid])},
        f"{V}/task_groups/{{group}}/results": {"get": _op(
            "Long-poll a task group's result stream", ok=p.ResultPage, params=[
                gid,
                _query("cursor", {"type": "string", "pattern": r"^\d{1,20}(-\d{1,20})?$"}),
                _query("wait", {"type": "number", "minimum": 0,
                                "description": "seconds; cut to the service's max_result_wait"}),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 10000}),
                _query("events", {"type": "string", "enum": ["0", "1"]})])},
        f"{V}/agent/connect": {"post": _op("Start an agent session", body=p.AgentHello,
                                           ok=p.AgentConfig, auth="endpoint")},
        f"{V}/agent/heartbeat": {"post": _op("Agent liveness and status", body=p.Heartbeat,
                                             ok=obj, auth="endpoint", errors=("409",))},
        f"{V}/agent/lease": {"post": _op("Long-poll for tasks", body=p.LeaseRequest, ok=p.Lease,
                                         auth="endpoint", errors=("409",))},
        f"{V}/agent/results": {"post": _op("Store finished tasks", body=p.ResultBatch,
                                           ok=p.ResultsStored, auth="endpoint")},
        f"{V}/agent/tasks/state": {"post": _op("Report tasks waiting for nodes or running",
                                               body=p.TaskStateUpdate, ok=obj, auth="endpoint")},
        f"{V}/agent/tasks/output": {"post": _op("Send live output of running tasks",
                                                body=p.TaskOutput, ok=obj, auth="endpoint")},
        f"{V}/agent/release": {"post": _op("Hand back leased tasks", body=p.Release, ok=obj,
                                           auth="endpoint")},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "fedcompute service", "version": __version__,
                 "description": "Federated Function-as-a-Service for science. Payload bytes are "
                                "raw in application/msgpack and base64 in JSON."},
        "paths": paths,
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


#: What the service accepts for bytes in JSON: canonical base64 with the standard or the
#: URL-safe alphabet (not both at once), padding optional.
_B64_TAIL = r"(?:{c}{{4}})*(?:{c}[AQgw](?:==)?|{c}{{2}}[AEIMQUYcgkosw048]=?)?"
BASE64 = "^(?:{}|{})$".format(_B64_TAIL.format(c="[A-Za-z0-9+/]"),
                              _B64_TAIL.format(c="[A-Za-z0-9_-]"))


def _describe_base64(node: Any) -> None:
    """Bytes fields (pydantic: ``format: base64url``) say exactly what JSON must carry."""
    if isinstance(node, dict):
        if node.get("format") == "base64url" and node.get("type") == "string":
            node.update({"contentEncoding": "base64", "pattern": BASE64})
        for value in node.values():
            _describe_base64(value)
    elif isinstance(node, list):
        for value in node:
            _describe_base64(value)


def _ref_name(name: str) -> dict:
    return {"$ref": _REF.format(model=name)}
