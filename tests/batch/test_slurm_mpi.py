"""MPI and containers on a real Slurm (``bash .ci/slurm/start.sh``): an ``MPIFunction``'s 4 ranks
start with ``srun`` inside the worker's batch job (Open MPI through Slurm's PMIx plugin:
Debian's ``openmpi-bin`` and ``libpmix-dev``), and a batch job runs its worker in a podman
container (``bash .ci/podman/setup.sh``)."""

from __future__ import annotations

import re
import shutil
import sys
import uuid
from pathlib import Path

import cloudpickle
import pytest
from fedcompute import MPIFunction, serialize
from fedcompute.endpoint.engines import get_engine
from fedcompute.endpoint.records import LeasedTask
from fedcompute.endpoint.runner import run_chunk

from . import helpers

cloudpickle.register_pickle_by_value(sys.modules[__name__])
cloudpickle.register_pickle_by_value(helpers)

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm"), pytest.mark.timeout(300)]

JOB = {"type": "slurm", "cores": 1, "memory": "1GB", "walltime": "00:10:00", "max_jobs": 1}
MPI_PROGRAM = Path(__file__).parents[1] / "endpoint" / "mpi_rank.py"
#: This node has 2 cores: 4 ranks need --overcommit; Open MPI ranks find each other via PMIx.
SRUN_OPTIONS = "--mpi=pmix --overcommit"


def run_one(engine, fn, *args, spec=None, timeout: float = 180):
    """One task through the agent's own path (runner.run_chunk on a Dask worker)."""
    task = LeasedTask(str(uuid.uuid4()), uuid.uuid4().hex, serialize.serialize_args(args, {}),
                      spec)
    [result] = engine.client.submit(run_chunk, [task], {task.function_id: serialize.dumps(fn)},
                                    10**7, pure=False).result(timeout=timeout)
    if result.status != "success":
        raise AssertionError(result.exception["traceback"])
    return serialize.loads(result.result)


def ranks(stdout: str) -> list[int]:
    # (Forwarded lines of several ranks may share a line of the launcher's output.)
    return sorted(int(r) for r in re.findall(r"rank (\d+) of \d+", stdout))


@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="no Open MPI (openmpi-bin) here")
def test_four_ranks_with_srun_in_the_workers_job(start_engine):
    engine = start_engine(**JOB)
    result = run_one(engine, MPIFunction(f"{sys.executable} {MPI_PROGRAM}"),
                     spec={"num_nodes": 1, "ranks_per_node": 4,
                           "launcher_options": SRUN_OPTIONS})
    assert result.returncode == 0, result.stderr
    assert result.cmd.startswith(
        f"srun --ntasks=4 --ntasks-per-node=4 --nodes=1 --nodelist=localhost {SRUN_OPTIONS} ")
    assert ranks(result.stdout) == [0, 1, 2, 3], result.stdout + result.stderr
    assert all(" of 4 " in line for line in result.stdout.splitlines())


def launch_and_job() -> dict:
    import os
    import subprocess

    done = subprocess.run("$FEDCOMPUTE_MPI_PREFIX sh -c 'echo $SLURM_PROCID'", shell=True,
                          capture_output=True, text=True, timeout=120)
    return {"prefix": os.environ.get("PARSL_MPI_PREFIX"), "job": os.environ.get("SLURM_JOB_ID"),
            "procs": sorted(done.stdout.split()), "err": done.stderr}


def test_python_functions_get_the_srun_prefix(start_engine):
    engine = start_engine(**JOB)
    out = run_one(engine, launch_and_job, spec={"num_ranks": 2, "launcher_options":
                                                "--overcommit"})
    assert out["prefix"].startswith("srun --ntasks=2 ") and out["job"], out
    assert out["procs"] == ["0", "1"], out["err"]


def test_configured_launcher_wins_over_auto(start_engine):
    engine = start_engine(**JOB, mpi_launcher="mpiexec")
    out = run_one(engine, launch_and_job, spec={"num_ranks": 2})
    assert out["prefix"] == "mpiexec -n 2 --host localhost:2", out


def image_and_job() -> tuple[str, str | None]:
    import os

    with open("/etc/fedcompute-image") as f:
        return f.read().strip(), os.environ.get("SLURM_JOB_ID")


@pytest.mark.skipif(shutil.which("podman") is None, reason="no podman (.ci/podman/setup.sh)")
def test_a_batch_job_runs_its_worker_in_the_endpoint_image(tmp_path):
    from tests.endpoint import container_image

    image = container_image.build_all()["worker"]
    engine = get_engine(JOB, tmp_path / "endpoint", container={"type": "podman", "image": image})
    try:
        assert "exec podman run --rm --network=host " in engine.job_script()
        engine.start()
        name, job = run_one(engine, image_and_job)
        assert name == "worker" and job  # in the image, inside the Slurm job
    finally:
        engine.close()
