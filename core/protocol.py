"""The wire protocol: task states, message schemas and the binary encoding.

Hot-path messages (task batches, leases, results) travel as msgpack (``application/msgpack``)
so payload bytes stay raw; the same schemas also accept JSON with base64 bytes for tools that
only speak JSON. The schemas double as the source of the service's OpenAPI document.
"""

from __future__ import annotations

import enum
import math
from typing import Annotated, Any, Literal

import msgpack
from pydantic import UUID4 as _UUID4  # noqa: F401 - re-exported for users of the schemas
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

API_VERSION = "v1"
MSGPACK = "application/msgpack"
JSON = "application/json"


def dashboard_path(endpoint_id: str) -> str:
    """Where the service shows ``endpoint_id``'s Dask dashboard. The endpoint's scheduler
    serves its HTTP routes under this prefix, so the dashboard's own links and websockets
    come back through the service."""
    return f"/console/dashboard/{endpoint_id}"


class TaskState(enum.StrEnum):
    RECEIVED = "received"
    WAITING_FOR_ENDPOINT = "waiting-for-endpoint"
    LEASED = "leased"  # handed to the endpoint, queued there for a worker
    WAITING_FOR_NODES = "waiting-for-nodes"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in FINAL_STATES


FINAL_STATES = frozenset({TaskState.SUCCESS, TaskState.FAILED, TaskState.CANCELLED})

UUIDStr = Annotated[
    str,
    StringConstraints(
        pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
        to_lower=True,
    ),
]
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")]
#: A group of the identity provider's group claim: Keycloak paths (``/lab/members``), Globus
#: group UUIDs, CILogon's ``CO:members:all``, Google group addresses.
GroupName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.@:/+=~-]{1,256}$")]


def _integral(value: Any) -> Any:
    """JSON Schema counts 427.0 as an integer; strict validation then takes it as 427."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


JSONInt = Annotated[int, BeforeValidator(_integral)]


class Message(BaseModel):
    # strict: no coercion (true is not 1, "1" is not 1), in msgpack and JSON alike
    model_config = ConfigDict(extra="forbid", strict=True, val_json_bytes="base64",
                              ser_json_bytes="base64")


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpackb(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


# --- users and functions --------------------------------------------------------------

class Sharing(Message):
    public: bool = False
    shared_with: list[Name] = Field(default_factory=list, max_length=1000)
    shared_with_groups: list[GroupName] = Field(
        default_factory=list, max_length=1000,
        description="groups (from the identity provider's group claim) whose members may use it")


class FunctionRegistration(Sharing):
    function_name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    function_body: bytes = Field(description="serialized function (opaque to the service)")
    description: Annotated[str, StringConstraints(max_length=2000)] = ""


class FunctionInfo(Message):
    function_id: UUIDStr
    function_name: str
    owner: str
    description: str = ""
    public: bool = False
    shared_with: list[str] = Field(default_factory=list)
    shared_with_groups: list[str] = Field(default_factory=list)
    created: float


class SharingUpdate(Message):
    public: bool | None = None
    shared_with: list[Name] | None = Field(default=None, max_length=1000)
    shared_with_groups: list[GroupName] | None = Field(default=None, max_length=1000)
    allowed_functions: list[UUIDStr] | None = Field(default=None, max_length=10000)


# --- endpoints ------------------------------------------------------------------------

class EndpointRegistration(Sharing):
    name: Name
    endpoint_id: UUIDStr | None = Field(
        default=None, description="re-register this endpoint (rotates its credential)")
    allowed_functions: list[UUIDStr] | None = Field(default=None, max_length=10000)
    metadata: dict[str, Any] = Field(default_factory=dict)


class EndpointRegistered(Message):
    endpoint_id: UUIDStr
    name: str
    credential: str


class EndpointInfo(Message):
    endpoint_id: UUIDStr
    name: str
    owner: str
    public: bool = False
    shared_with: list[str] = Field(default_factory=list)
    shared_with_groups: list[str] = Field(default_factory=list)
    allowed_functions: list[str] | None = None
    status: Literal["online", "offline"]
    last_heartbeat: float | None = None
    created: float


class EndpointStatus(Message):
    endpoint_id: UUIDStr
    status: Literal["online", "offline"]
    last_heartbeat: float | None = None
    queued: int = Field(description="tasks waiting in the service for this endpoint")
    leased: int = Field(description="tasks handed to the endpoint and not yet finished")
    details: dict[str, Any] = Field(default_factory=dict, description="as the endpoint reports")


# --- tasks ----------------------------------------------------------------------------

class TaskSpec(Message):
    task_id: UUIDStr = Field(description="chosen by the submitter, so retries are idempotent")
    function_id: UUIDStr
    payload: bytes = Field(description="serialized (args, kwargs), opaque to the service")
    resource_specification: dict[str, Any] | None = None
    options: dict[str, Any] | None = Field(
        default=None, description="execution options, e.g. {'capture_output': true, "
                                  "'stream_output': true, 'deadline': <unix time it must "
                                  "start by>}")

    @field_validator("options")
    @classmethod
    def _deadline_is_a_time(cls, options: dict[str, Any] | None) -> dict[str, Any] | None:
        deadline = (options or {}).get("deadline")
        if deadline is not None and (isinstance(deadline, bool)
                                     or not isinstance(deadline, int | float)
                                     or not math.isfinite(deadline)):
            raise ValueError("options.deadline must be a unix time (a number of seconds)")
        return options


class TaskBatch(Message):
    endpoint_id: UUIDStr
    task_group_id: UUIDStr | None = None
    tasks: list[TaskSpec] = Field(min_length=1)


class BatchAccepted(Message):
    task_group_id: UUIDStr
    task_ids: list[str]
    duplicates: int = Field(0, description="tasks already known (an idempotent resubmission)")


class ExceptionEnvelope(Message):
    type: str
    message: str = ""
    traceback: str = ""
    pickle: bytes = b""


class TaskRecord(Message):
    task_id: UUIDStr
    status: TaskState
    function_id: str | None = None
    endpoint_id: str | None = None
    task_group_id: str | None = None
    attempts: int = 0
    timestamps: dict[str, float] = Field(default_factory=dict)
    completed: bool = False
    result: bytes | None = None
    exception: ExceptionEnvelope | None = None
    stdout: str | None = None
    stderr: str | None = None
    worker: dict[str, Any] | None = Field(None, description="where it ran: host, pid")


class TaskIds(Message):
    task_ids: list[UUIDStr] = Field(min_length=1, max_length=10000)


class TaskRecords(Message):
    tasks: dict[str, TaskRecord | None]


class StateEvent(Message):
    state: TaskState
    task_ids: list[str]
    at: float


OutputStream = Literal["stdout", "stderr", "log"]


class OutputEvent(Message):
    """Live output of a running task submitted with ``stream_output`` (in order: ``seq``)."""

    task_id: str
    seq: int
    stream: OutputStream
    text: str
    at: float


class ResultPage(Message):
    cursor: str = Field(description="pass back as ?cursor= to continue the stream")
    results: list[TaskRecord]
    events: list[StateEvent] = Field(
        default_factory=list, description="with ?events=1: tasks that were leased, wait for "
                                          "nodes or started since the cursor")
    output: list[OutputEvent] = Field(
        default_factory=list, description="with ?events=1: live output of running tasks "
                                          "submitted with stream_output")


class GroupTasks(Message):
    task_group_id: UUIDStr
    task_ids: list[str]


# --- endpoint agent -------------------------------------------------------------------

class AgentHello(Message):
    session: Annotated[str, StringConstraints(min_length=8, max_length=64)]
    status: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)


class AgentConfig(Message):
    endpoint_id: UUIDStr
    name: str
    owner: str
    allowed_functions: list[str] | None = None
    heartbeat_interval: float
    heartbeat_timeout: float = 30.0
    reclaimed: int = 0


class LeaseRequest(Message):
    session: str
    max_tasks: JSONInt = Field(100, ge=1, le=10000)
    wait: float = Field(10.0, ge=0, le=60)
    cached_functions: list[str] = Field(default_factory=list, max_length=1024)
    recover: bool = Field(False, description="return the tasks already leased to this session "
                                             "instead of new ones (after a lost lease reply)")
    status: dict[str, Any] | None = Field(
        None, description="the agent's status, as a heartbeat carries it: a polling agent "
                          "needs no separate heartbeats")


class LeasedTask(Message):
    task_id: str
    function_id: str
    payload: bytes
    resource_specification: dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    attempt: int = 0
    owner: str = Field("", description="the user who submitted it (multi-user endpoints run "
                                        "it as that user's mapped account)")


class Lease(Message):
    tasks: list[LeasedTask]
    functions: dict[str, bytes] = Field(default_factory=dict)
    cancel: list[str] = Field(default_factory=list,
                              description="tasks the agent holds whose cancellation was asked for")


class TaskResult(Message):
    task_id: UUIDStr
    status: Literal["success", "failed", "cancelled"]
    result: bytes | None = None
    exception: ExceptionEnvelope | None = None
    stdout: str | None = None
    stderr: str | None = None
    timings: dict[str, float] = Field(default_factory=dict)


class ResultBatch(Message):
    session: str
    results: list[TaskResult] = Field(min_length=1)


class ResultsStored(Message):
    stored: int
    duplicates: int


class Heartbeat(Message):
    session: str
    status: dict[str, Any] = Field(default_factory=dict)


class TaskStateUpdate(Message):
    session: str
    state: Literal["waiting-for-nodes", "running"]
    task_ids: list[UUIDStr] = Field(max_length=100000)
    workers: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="task id -> where it started: host, pid")


class OutputBatch(Message):
    """One batch of a running task's live output, as its worker sent it."""

    task_id: UUIDStr
    seq: JSONInt = Field(ge=1, description="1, 2, ... per task: the order of its batches")
    items: list[tuple[OutputStream, Annotated[str, Field(max_length=256 * 1024)]]] = Field(
        max_length=1000)


class TaskOutput(Message):
    session: str
    batches: list[OutputBatch] = Field(max_length=1000)


class Release(Message):
    session: str
    task_ids: list[UUIDStr] = Field(max_length=100000)
    #: The agent is stopping: end its session and hand back everything still leased to it
    #: (what a long-poll it abandoned received), so nothing waits for the next connect.
    disconnect: bool = False


class ErrorBody(Message):
    error: str
    message: str
