"""fedcompute: federated Function-as-a-Service for science.

Register a Python function once, run it on any endpoint (a laptop, a lab server, an HPC
cluster behind a firewall) through one self-hosted service.
"""

from .client import Batch, Client
from .errors import (
    DeadlineExceeded,
    EndpointDeleted,
    FedComputeError,
    RemoteTraceback,
    ServiceError,
    TaskCancelled,
    TaskExecutionFailed,
    TaskExpired,
    TaskPending,
    VersionMismatchError,
)
from .executor import ComputeFuture, Executor
from .mpi import MPIFunction
from .output import OutputLine
from .protocol import TaskState
from .shell import ShellFunction, ShellResult

__version__ = "0.1.0"

__all__ = [
    "Batch", "Client", "ComputeFuture", "DeadlineExceeded", "EndpointDeleted", "Executor",
    "FedComputeError", "MPIFunction",
    "OutputLine", "RemoteTraceback",
    "ServiceError", "ShellFunction", "ShellResult", "TaskCancelled", "TaskExecutionFailed",
    "TaskExpired",
    "TaskPending", "TaskState", "VersionMismatchError", "__version__",
]
