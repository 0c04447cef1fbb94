"""Containers (endpoint/containers.py): the endpoint's workers in an image, and single tasks in
another, with real podman on images built here (``tests/endpoint/container_image.py``;
``bash .ci/podman/setup.sh`` installs podman and builds them)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from fedcompute import Executor, MPIFunction, ShellFunction, ShellResult, serialize
from fedcompute.endpoint.config import EndpointConfig
from fedcompute.endpoint.containers import (
    ContainerError,
    container_spec,
    run_argv,
    worker_python,
)
from fedcompute.endpoint.engines import get_engine
from fedcompute.endpoint.engines.jobqueue import job_script
from fedcompute.endpoint.records import LeasedTask
from fedcompute.endpoint.runner import run_chunk
from fedcompute.errors import WalltimeExceeded

from . import container_image

PODMAN = {"type": "podman", "image": "localhost/img:1"}


# --- command lines and checks (no container runs) ----------------------------------------

def test_container_spec_checks_keys_types_and_options():
    spec = container_spec({"type": "podman", "image": "img", "options": "-v /d:/d --gpus all"})
    assert spec.options == ("-v", "/d:/d", "--gpus", "all") and spec.python == "python3"
    with pytest.raises(ValueError, match="unknown key 'imgae'; did you mean 'image'"):
        container_spec({"type": "podman", "imgae": "x"})
    with pytest.raises(ValueError, match="did you mean 'apptainer'"):
        container_spec({"type": "aptainer", "image": "x"})
    with pytest.raises(ValueError, match="image must be"):
        container_spec({"type": "docker", "image": "--privileged"})
    with pytest.raises(ValueError, match="options must be a list of strings"):
        container_spec({"type": "docker", "image": "x", "options": [1]})


def test_command_lines_per_container_type():
    spec = container_spec({**PODMAN, "options": ["--gpus", "all"]})
    assert run_argv(spec, ["python3", "-V"], env={"A": "1"}, pass_env=["B"], mounts=["/w"],
                    interactive=True, name="n", workdir="/w") == [
        "podman", "run", "--rm", "--network=host", "--interactive", "--name", "n",
        "--volume", "/w:/w", "--env", "B", "--env", "A=1", "--workdir", "/w",
        "--gpus", "all", "localhost/img:1", "python3", "-V"]
    apptainer = container_spec({"type": "apptainer", "image": "/images/x.sif"})
    assert run_argv(apptainer, ["sh", "-c", "id"], env={"A": "1"}, pass_env=["B"],
                    mounts=["/w"], workdir="/w") == [
        "apptainer", "exec", "--bind", "/w", "--env", "A=1", "--pwd", "/w", "/images/x.sif",
        "sh", "-c", "id"]
    assert worker_python(container_spec(PODMAN)).startswith(
        "podman run --rm --network=host --env SLURM_JOB_ID")


def test_batch_jobs_run_their_worker_in_the_container():
    script = job_script({"type": "slurm", "cores": 1, "memory": "1GB"}, None,
                        container={**PODMAN, "options": ["--volume", "/scratch:/scratch"]})
    line = next(li for li in script.splitlines() if "distributed.cli.dask_worker" in li)
    assert line.startswith("exec podman run --rm --network=host ")
    assert "--env DASK_DISTRIBUTED__WORKER__DAEMON" in line  # exported by the prologue
    assert "--volume /scratch:/scratch localhost/img:1 python3 -m distributed.cli.dask_worker" \
        in line
    with pytest.raises(ValueError, match="set container: {python: ...}"):
        job_script({"type": "slurm", "python": "/opt/py"}, None, container=PODMAN)


def test_endpoint_config_checks_its_container():
    assert EndpointConfig.model_validate({"container": PODMAN}).container == PODMAN
    with pytest.raises(ValueError, match="did you mean 'image'"):
        EndpointConfig.model_validate({"container": {"type": "podman", "imag": "x"}})


def test_per_task_container_is_checked_at_dispatch():
    from fedcompute.endpoint.engines.resources import dask_resources

    split = dask_resources({"container": PODMAN, "GPU": 1})
    assert split["resources"] == {"GPU": 1} and split["options"]["container"] == PODMAN
    with pytest.raises(ValueError, match=r"resource_specification\['container'\]: type"):
        dask_resources({"container": {"type": "lxc", "image": "x"}})


# --- real podman -------------------------------------------------------------------------

@pytest.fixture(scope="session")
def images() -> dict[str, str]:
    """Tags of the test images (built if missing); podman runs containers here."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed here; as root: bash .ci/podman/setup.sh")
    tags = container_image.build_all()
    probe = subprocess.run(["podman", "run", "--rm", tags["shell"], "cat",
                            "/etc/fedcompute-image"], capture_output=True, text=True,
                           timeout=120)
    if probe.stdout.strip() != "shell":
        pytest.fail(f"podman is installed but runs no container: {probe.stderr.strip()!r}; "
                    "as root: bash .ci/podman/setup.sh")
    return tags


def leftover_containers() -> list[str]:
    out = subprocess.run(["podman", "ps", "--all", "--format", "{{.Names}}"],
                         capture_output=True, text=True, timeout=60).stdout
    return [n for n in out.split() if n.startswith("fedcompute-")]


def image_and_pid() -> tuple[str, int]:
    import os

    with open("/etc/fedcompute-image") as f:
        return f.read().strip(), os.getpid()


def test_local_engine_workers_run_in_the_endpoint_image(images, tmp_path):
    engine = get_engine({"type": "local", "workers": 2}, tmp_path,
                        container={"type": "podman", "image": images["worker"]})
    started = time.monotonic()
    engine.start()
    try:
        took = time.monotonic() - started
        assert engine.worker_count() == 2
        assert all(a.startswith("tcp://127.0.0.1:") for a in
                   engine.client.scheduler_info(n_workers=-1)["workers"])
        # The agent's own path: a chunk of leased tasks through runner.run_chunk.
        body = serialize.dumps(image_and_pid)
        tasks = [LeasedTask(str(uuid.uuid4()), "f-image", serialize.serialize_args((), {}))
                 for _ in range(3)]
        results = engine.client.submit(run_chunk, tasks, {"f-image": body}, 10**6,
                                       pure=False).result(timeout=60)
        assert [r.status for r in results] == ["success"] * 3
        assert {serialize.loads(r.result)[0] for r in results} == {"worker"}
        print(f"2 container workers up in {took:.1f}s")
    finally:
        engine.close()
    assert leftover_containers() == []


def test_a_missing_endpoint_image_fails_with_podmans_words(images, tmp_path):
    engine = get_engine({"type": "local", "workers": 1, "container_start_timeout": 60},
                        tmp_path, container={"type": "podman", "image": "localhost/nope:0"})
    with pytest.raises(RuntimeError, match=r"container worker 0 exited with code 125:.*nope"):
        engine.start()


def image_name(x: int) -> tuple[str, int, str]:
    print("printed in the container")
    with open("/etc/fedcompute-image") as f:
        return f.read().strip(), 2 * x, sys.version.split()[0]


def test_a_task_runs_in_its_own_image(fed_stack, images):
    spec = {"container": {"type": "podman", "image": images["task"]}}
    with Executor(fed_stack.endpoint_id, client=fed_stack.client()) as ex:
        future = ex.submit_with(image_name, (21,), resource_specification=spec,
                                capture_output=True)
        assert future.result(timeout=120) == ("task", 42, sys.version.split()[0])
    assert "printed in the container" in future.stdout


def test_a_shell_function_runs_in_an_image_without_python(fed_stack, images):
    spec = {"container": {"type": "podman", "image": images["shell"]}}
    with Executor(fed_stack.endpoint_id, client=fed_stack.client()) as ex:
        result = ex.submit_with(ShellFunction("cat /etc/fedcompute-image; echo {word}; "
                                              "test -x /usr/local/bin/python3 || echo nopy"),
                                kwargs={"word": "hi"}, resource_specification=spec
                                ).result(timeout=120)
    assert isinstance(result, ShellResult) and result.returncode == 0, result
    assert result.stdout.split() == ["shell", "hi", "nopy"]
    assert result.cmd.startswith("podman run --rm --network=host --name fedcompute-shell-")


def test_walltimes_stop_and_remove_task_containers(fed_stack, images):
    shell = {"container": {"type": "podman", "image": images["shell"]}, "walltime": 2}
    python = {"container": {"type": "podman", "image": images["task"]}, "walltime": 2}
    with Executor(fed_stack.endpoint_id, client=fed_stack.client()) as ex:
        stopped = ex.submit_with(ShellFunction("sleep 60"), resource_specification=shell)
        slow = ex.submit_with(time.sleep, (60,), resource_specification=python)
        result = stopped.result(timeout=60)
        assert result.returncode == 124 and "timed out after 2" in result.stderr
        with pytest.raises(WalltimeExceeded, match="walltime of 2.0s"):
            slow.result(timeout=60)
    deadline = time.monotonic() + 30
    while leftover_containers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert leftover_containers() == []


def test_an_image_without_python_fails_a_python_task_clearly(fed_stack, images):
    spec = {"container": {"type": "podman", "image": images["shell"]}}
    with Executor(fed_stack.endpoint_id, client=fed_stack.client()) as ex:
        future = ex.submit_with(image_name, (1,), resource_specification=spec)
        with pytest.raises(ContainerError, match=r"(?s)exited with code 127 without a result.*"
                                                 r"python3"):
            future.result(timeout=120)


@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="no mpiexec (openmpi-bin)")
def test_mpi_launcher_starts_one_container_per_rank(fed_stack, images):
    spec = {"container": {"type": "podman", "image": images["shell"]}, "num_ranks": 2}
    with Executor(fed_stack.endpoint_id, client=fed_stack.client()) as ex:
        result = ex.submit_with(MPIFunction("echo rank $OMPI_COMM_WORLD_RANK in "
                                            "$(cat /etc/fedcompute-image)"),
                                resource_specification=spec).result(timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.cmd.startswith("mpiexec -n 2 --host localhost:2 podman run ")
    assert sorted(result.stdout.splitlines()) == ["rank 0 in shell", "rank 1 in shell"]


def test_image_builder_is_cached(images):
    started = time.monotonic()
    assert container_image.build_all() == images
    assert time.monotonic() - started < 30
    assert Path(container_image.__file__).exists()
