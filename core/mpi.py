"""``MPIFunction``: a shell command started by the endpoint's MPI launcher, Globus Compute style.

    from fedcompute import Executor, MPIFunction

    with Executor(endpoint_id=EP) as ex:
        ex.resource_specification = {"num_nodes": 2, "ranks_per_node": 4}
        print(ex.submit(MPIFunction("./simulate --steps {steps}"), steps=100).result().stdout)

The endpoint turns the task's ``num_nodes`` / ``ranks_per_node`` / ``num_ranks`` /
``launcher_options`` into a launcher prefix (``srun ...`` on Slurm, ``mpiexec ...`` elsewhere)
and runs ``<prefix> ./simulate --steps 100``. Python functions submitted with the same keys
find the prefix in ``$FEDCOMPUTE_MPI_PREFIX`` (and ``$PARSL_MPI_PREFIX``, as in Globus Compute).
"""

from __future__ import annotations

import copy
import os
from contextvars import ContextVar
from dataclasses import asdict
from typing import Any

from .shell import ShellFunction, ShellResult

#: The MPI launch of the task running in this thread, set by the endpoint's runner: variables
#: such as ``FEDCOMPUTE_MPI_PREFIX``. Threads of one worker run different tasks, so this, not
#: ``os.environ``, is what ``MPIFunction`` reads first.
current_launch: ContextVar[dict[str, str] | None] = ContextVar("fedcompute_mpi_launch",
                                                               default=None)


def launch_environment() -> dict[str, str]:
    """The MPI launch variables of the current task (empty outside an MPI task)."""
    launch = current_launch.get()
    if launch is not None:
        return dict(launch)
    prefix = os.environ.get("FEDCOMPUTE_MPI_PREFIX")
    return {"FEDCOMPUTE_MPI_PREFIX": prefix} if prefix else {}


class MPIFunction(ShellFunction):
    """A shell command run as an MPI application: ``<launcher prefix> <cmd>``.

    Same arguments as :class:`ShellFunction`; returns a :class:`ShellResult` whose ``cmd`` is
    the full command line. Needs an MPI ``resource_specification`` (``num_nodes``,
    ``ranks_per_node`` and/or ``num_ranks``; ``launcher_options`` is appended to the prefix).
    """

    def __call__(self, **kwargs: Any) -> ShellResult | dict[str, Any]:
        launch = launch_environment()
        prefix = launch.get("FEDCOMPUTE_MPI_PREFIX")
        if not prefix:
            raise RuntimeError(
                "MPIFunction needs an MPI launch: submit it with resource_specification="
                "{'num_nodes': N, 'ranks_per_node': R} (or 'num_ranks')")
        # A copy carries the launch variables: this object may serve other threads' tasks.
        shell = copy.copy(self)
        shell.env = {**launch, **(self.env or {})}
        result = ShellFunction.run(shell, f"{prefix} {self.cmd.format(**kwargs)}")
        return asdict(result) if self.return_dict else result
