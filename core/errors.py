"""Errors raised by the SDK, the service and the endpoint."""

from __future__ import annotations


class FedComputeError(Exception):
    """Base class of every fedcompute error."""


class ServiceError(FedComputeError):
    """The service answered with an error status."""

    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.code = code


class AuthError(ServiceError):
    """Missing, wrong or revoked credentials (401)."""


class ForbiddenError(ServiceError):
    """The caller may not use this resource (403)."""


class NotFoundError(ServiceError):
    """No such resource visible to the caller (404)."""


class PayloadTooLarge(ServiceError):
    """A request, payload or batch exceeds a service limit (413)."""


class RateLimited(ServiceError):
    """Too many requests; retry after ``retry_after`` seconds (429)."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 retry_after: float = 1.0):
        super().__init__(status, message, code)
        self.retry_after = retry_after


class TaskPending(FedComputeError):
    """The task has not finished yet."""

    def __init__(self, task_id: str, status: str):
        super().__init__(f"task {task_id} is {status}")
        self.task_id = task_id
        self.status = status


class SerializationError(FedComputeError):
    """A function, its arguments or its result could not be (de)serialized."""


class RemoteTraceback(Exception):
    """Carries the remote traceback as the ``__cause__`` of a re-raised remote exception."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return "\n\nRemote traceback:\n" + self.tb


class TaskExecutionFailed(FedComputeError):
    """A remote task failed and its exception could not be rebuilt locally."""

    def __init__(self, remote_type: str, message: str, remote_traceback: str = ""):
        super().__init__(f"{remote_type}: {message}\n\nRemote traceback:\n{remote_traceback}")
        self.remote_type = remote_type
        self.remote_message = message
        self.remote_traceback = remote_traceback


class TaskCancelled(FedComputeError):
    """The task was cancelled before it ran."""


class EndpointLost(FedComputeError):
    """The endpoint running the task went away too many times."""


class EndpointDeleted(FedComputeError):
    """The task's endpoint was deleted before the task ended."""


class TaskExpired(FedComputeError):
    """The task had not ended when its record was about to expire (the service's task_ttl)."""


class DeadlineExceeded(FedComputeError):
    """The task had not started by its ``deadline``."""


class JobSubmissionFailed(FedComputeError):
    """The endpoint's batch system kept refusing the jobs that would run the task (a bad
    account, partition or limit): the message has the batch system's own words."""


class WorkerLost(FedComputeError):
    """The worker process running the task died (segfault, ``os._exit``, OOM kill)."""


class WalltimeExceeded(FedComputeError):
    """The task ran longer than its walltime and was stopped."""


class ResultTooLarge(FedComputeError):
    """The task's result exceeds the endpoint's ``max_result_size``."""


class FunctionNotAllowed(FedComputeError):
    """The endpoint does not allow this function (``allowed_functions``)."""


class VersionMismatch(FedComputeError):
    """This SDK (or an endpoint) and the service do not speak compatible versions."""


class VersionMismatchError(VersionMismatch):
    """The endpoint runs a Python, cloudpickle or fedcompute version this SDK's functions
    cannot run on; raised before any task is sent (``Executor(check_versions=...)``)."""


class VersionMismatchWarning(UserWarning):
    """``check_versions="warn"``: the endpoint's versions differ; tasks are sent anyway."""


class IgnoredOptionWarning(UserWarning):
    """An option that only means something to Globus Compute (its AMQP transport, Globus
    Auth, ...) was given; fedcompute accepts it so that such code runs, and ignores it."""


#: Errors raised by fedcompute itself, rebuilt by name when they cross the wire.
BUILTIN_ERRORS = {
    cls.__name__: cls
    for cls in (TaskCancelled, EndpointLost, EndpointDeleted, WorkerLost, WalltimeExceeded,
                ResultTooLarge, FunctionNotAllowed, SerializationError, TaskExpired,
                DeadlineExceeded, JobSubmissionFailed)
}
