"""MPIFunction and MPI launches on the local engine, with a real Open MPI ``mpiexec`` (Debian's
``openmpi-bin``; as root, the launch sets Open MPI's run-as-root switches itself)."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest
from fedcompute import Executor, MPIFunction, ShellResult
from fedcompute.mpi import current_launch

MPI_PROGRAM = Path(__file__).with_name("mpi_rank.py")

needs_mpiexec = pytest.mark.skipif(shutil.which("mpiexec") is None,
                                   reason="no mpiexec here (Debian: apt-get install openmpi-bin)")


def test_mpi_function_needs_a_launch():
    with pytest.raises(RuntimeError, match="resource_specification"):
        MPIFunction("hostname")()


def test_mpi_function_runs_under_the_prefix_of_its_task():
    token = current_launch.set({"FEDCOMPUTE_MPI_PREFIX": "env LAUNCHED=yes"})
    try:
        result = MPIFunction("sh -c 'echo $LAUNCHED {word}'", return_dict=False)(word="hi")
    finally:
        current_launch.reset(token)
    assert isinstance(result, ShellResult)
    assert result.cmd == "env LAUNCHED=yes sh -c 'echo $LAUNCHED hi'"
    assert result.stdout.strip() == "yes hi" and result.returncode == 0


def ranks_in(stdout: str) -> list[int]:
    # (Forwarded lines of several ranks may share a line of mpiexec's output.)
    return sorted(int(r) for r in re.findall(r"rank (\d+) of \d+", stdout))


@needs_mpiexec
def test_four_ranks_with_mpiexec_on_the_local_engine(fed_stack):
    with Executor(fed_stack.endpoint_id, client=fed_stack.client()) as ex:
        ex.resource_specification = {"num_nodes": 1, "ranks_per_node": 4}
        result = ex.submit(MPIFunction(f"{sys.executable} {MPI_PROGRAM}")).result(timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.cmd.startswith("mpiexec -n 4 --host localhost:4 ")
    assert ranks_in(result.stdout) == [0, 1, 2, 3], result.stdout
    # Each rank knows the size of the world it was launched into.
    assert set(re.findall(r"rank \d+ of (\d+)", result.stdout)) == {"4"}, result.stdout


def launch_variables_and_run(test_dir: str, python: str) -> tuple[dict, str]:
    """A Python function that launches an MPI program itself, from the prefix it is given."""
    import os
    import subprocess

    names = ("FEDCOMPUTE_MPI_PREFIX", "PARSL_MPI_PREFIX", "PARSL_NUM_RANKS",
             "FEDCOMPUTE_MPI_NODELIST")
    program = os.path.join(test_dir, "mpi_rank.py")
    done = subprocess.run(f"$PARSL_MPI_PREFIX {python} {program}",
                          shell=True, capture_output=True, text=True, timeout=60)
    return {n: os.environ.get(n) for n in names}, done.stdout + done.stderr


@needs_mpiexec
def test_python_functions_get_the_prefix_in_their_environment(fed_stack):
    with Executor(fed_stack.endpoint_id, client=fed_stack.client()) as ex:
        future = ex.submit_with(launch_variables_and_run,
                                (str(MPI_PROGRAM.parent), sys.executable),
                                resource_specification={"num_ranks": 2,
                                                        "launcher_options": "--bind-to none"})
        env, output = future.result(timeout=120)
    assert env["FEDCOMPUTE_MPI_PREFIX"] == env["PARSL_MPI_PREFIX"] == (
        "mpiexec -n 2 --host localhost:2 --bind-to none")
    assert env["PARSL_NUM_RANKS"] == "2" and env["FEDCOMPUTE_MPI_NODELIST"] == "localhost"
    assert ranks_in(output) == [0, 1], output


def test_more_nodes_than_the_worker_has_fails_clearly(fed_stack):
    with Executor(fed_stack.endpoint_id, client=fed_stack.client()) as ex:
        future = ex.submit_with(MPIFunction("hostname"),
                                resource_specification={"num_nodes": 3})
        with pytest.raises(ValueError, match=r"num_nodes=3, but this worker's batch job has 1"):
            future.result(timeout=60)


def test_a_bad_mpi_request_fails_at_the_endpoint(fed_stack):
    with Executor(fed_stack.endpoint_id, client=fed_stack.client()) as ex:
        future = ex.submit_with(MPIFunction("hostname"),
                                resource_specification={"num_ranks": 0})
        with pytest.raises(ValueError, match=r"num_ranks'\] must be a positive integer"):
            future.result(timeout=60)
