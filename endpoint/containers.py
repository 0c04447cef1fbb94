"""Containers: an endpoint's workers in an image, and single tasks in another image.

(Longer than our ~400-line guide: the command line of each runtime — podman, docker,
podman-hpc, apptainer, singularity — is built in one place for both uses, so that a flag
fixed for one is fixed for both.)

* Endpoint config ``container: {type: podman, image: ..., options: [...]}`` runs the
  endpoint's Dask workers inside the image, as Globus Compute wraps its worker command: the
  batch engines wrap dask-jobqueue's ``python`` (``podman run ... IMAGE python -m
  distributed.cli.dask_worker ...``); the local engine starts each worker with
  :class:`ContainerWorker`, a ``SpecCluster`` worker that is a ``podman run`` subprocess.
* A task's ``resource_specification={"container": {...}}`` runs that task in its own
  container: a ``ShellFunction``/``MPIFunction`` runs its command line there (any image with
  ``/bin/sh``; an MPI launcher starts one container per rank, as ``srun apptainer exec`` does),
  any other function runs in the image's Python through this module's entry point, which reads
  the task from stdin and writes its result to stdout (``python -m
  fedcompute.endpoint.containers``; the image needs ``fedcompute`` at the endpoint's version).

Types: ``podman``, ``docker``, ``podman-hpc`` (``run --rm --network=host``) and ``apptainer``,
``singularity`` (``exec``; host network and environment by default). Only stdlib and
fedcompute core are imported at module level: the entry point runs in slim images.
"""

from __future__ import annotations

import difflib
import os
import shlex
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DOCKER_LIKE = ("podman", "docker", "podman-hpc")
APPTAINER_LIKE = ("apptainer", "singularity")
TYPES = DOCKER_LIKE + APPTAINER_LIKE
KEYS = ("type", "image", "options", "python")

#: Variables a worker container gets from the batch job it runs in: the nodes for MPI
#: launches and the endpoint's launcher setting (apptainer passes the environment anyway).
JOB_ENV = ("SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_NODELIST", "PBS_JOBID", "PE_HOSTFILE",
           "LSB_JOBID", "LSB_MCPU_HOSTS", "LSB_HOSTS", "OAR_JOB_ID",
           "FEDCOMPUTE_MPI_LAUNCHER")

#: What MPI launchers tell each rank, passed into per-rank podman containers.
RANK_ENV = ("OMPI_*", "PMIX_*", "PMI_*", "SLURM_*", "MPI_LOCALRANKID", "MPI_LOCALNRANKS")

#: Seconds a task's container may take to start, on top of the task's walltime.
START_SLACK = 60.0


class ContainerError(RuntimeError):
    """A task's container did not run or did not report a result (its stderr is included)."""


@dataclass(frozen=True)
class ContainerSpec:
    """Where to run: ``type`` (podman, docker, podman-hpc, apptainer, singularity), ``image``,
    extra ``options`` for ``run``/``exec``, and the image's ``python``."""

    type: str
    image: str
    options: tuple[str, ...] = field(default=())
    python: str = "python3"

    @property
    def docker_like(self) -> bool:
        return self.type in DOCKER_LIKE


def container_spec(value: Any, where: str = "container") -> ContainerSpec:
    """Validate a ``container:`` mapping; ``ValueError`` says what is wrong (``where`` names
    the setting: ``container`` or ``resource_specification['container']``)."""
    if isinstance(value, ContainerSpec):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be a mapping like {{type: podman, image: NAME}}, "
                         f"got {value!r}")
    for key in value:
        if key not in KEYS:
            close = difflib.get_close_matches(str(key), KEYS, n=1)
            raise ValueError(f"{where}: unknown key {key!r}"
                             + (f"; did you mean {close[0]!r}?" if close
                                else f" (known: {', '.join(KEYS)})"))
    kind = value.get("type")
    if kind not in TYPES:
        close = difflib.get_close_matches(str(kind), TYPES, n=1)
        raise ValueError(f"{where}: type must be one of {', '.join(TYPES)}, got {kind!r}"
                         + (f"; did you mean {close[0]!r}?" if close else ""))
    image = value.get("image")
    if not isinstance(image, str) or not image.strip() or image.startswith("-"):
        raise ValueError(f"{where}: image must be an image name or path, got {image!r}")
    options = value.get("options") or []
    if isinstance(options, str):  # Globus Compute's container_cmd_options is one string
        options = shlex.split(options)
    if not isinstance(options, list | tuple) or not all(isinstance(o, str) for o in options):
        raise ValueError(f"{where}: options must be a list of strings, got {options!r}")
    python = value.get("python", "python3")
    if not isinstance(python, str) or not python.strip():
        raise ValueError(f"{where}: python must be the image's interpreter, got {python!r}")
    return ContainerSpec(kind, image.strip(), tuple(options), python)


def run_argv(spec: ContainerSpec, command: Sequence[str], *,
             env: Mapping[str, str] | None = None, pass_env: Iterable[str] = (),
             mounts: Iterable[str] = (), interactive: bool = False,
             name: str | None = None, workdir: str | None = None) -> list[str]:
    """The command line that runs ``command`` in the container.

    ``env`` sets variables, ``pass_env`` passes these of the caller's (docker-like types;
    apptainer passes the whole environment), ``mounts`` bind host folders at the same path,
    ``interactive`` keeps stdin open, ``name`` names the container (so it can be removed
    when its client is killed), ``workdir`` is where ``command`` starts.
    """
    env = dict(env or {})
    if spec.docker_like:
        argv = [spec.type, "run", "--rm", "--network=host"]
        if interactive:
            argv.append("--interactive")
        if name:
            argv += ["--name", name]
        for folder in mounts:
            argv += ["--volume", f"{folder}:{folder}"]
        for var in pass_env:
            argv += ["--env", var]
        for key, value in env.items():
            argv += ["--env", f"{key}={value}"]
        if workdir:
            argv += ["--workdir", workdir]
    else:
        argv = [spec.type, "exec"]
        for folder in mounts:
            argv += ["--bind", folder]
        for key, value in env.items():
            argv += ["--env", f"{key}={value}"]
        if workdir:
            argv += ["--pwd", workdir]
    return [*argv, *spec.options, spec.image, *command]


def worker_python(spec: ContainerSpec, env_names: Iterable[str] = ()) -> str:
    """dask-jobqueue's ``python`` for a batch job whose worker runs in the container: the job
    script runs ``<this> -m distributed.cli.dask_worker ...``."""
    names = list(dict.fromkeys([*env_names, *JOB_ENV]))
    return shlex.join(run_argv(spec, [spec.python], pass_env=names))


def remove_argv(spec: ContainerSpec, name: str) -> list[str]:
    """How to remove a named container whose client was killed (docker-like types)."""
    return [spec.type, "rm", "--force", "--time", "0", name] if spec.type != "docker" \
        else ["docker", "rm", "--force", name]


def _remove(spec: ContainerSpec, name: str | None) -> None:
    if name and spec.docker_like:
        subprocess.run(remove_argv(spec, name), capture_output=True, timeout=60, check=False)


def container_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# --- one task in a container -------------------------------------------------------------

def run_task_in_container(spec: ContainerSpec, task: Any, body: bytes, max_result_size: int,
                          launch_env: Mapping[str, str] | None = None) -> Any:
    """Run one leased task (an ``endpoint.records.LeasedTask``) in the container; returns its
    ``TaskResult``, never raises."""
    import time

    from fedcompute import serialize
    from fedcompute.shell import ShellFunction

    from .records import TaskResult

    started = time.time()
    try:
        fn = serialize.loads(body)
    except Exception:  # noqa: BLE001 - it may need what only the image has: run it there
        fn = None
    try:
        if isinstance(fn, ShellFunction):
            args, kwargs = serialize.loads(task.payload)
            result = run_shell_in_container(spec, fn, kwargs, task.walltime, launch_env)
            data = serialize.dumps(result if not fn.return_dict else _asdict(result))
            out = TaskResult(task.task_id, "success", data, started=started)
        else:
            out = _run_python(spec, task, body, max_result_size, launch_env)
    except BaseException as exc:  # noqa: BLE001 - a failure is a result too
        out = TaskResult.failure(task.task_id, exc)
        out.started = started
    out.finished = time.time()
    return out


def _asdict(result: Any) -> dict:
    from dataclasses import asdict

    return asdict(result)


def _run_python(spec: ContainerSpec, task: Any, body: bytes, max_result_size: int,
                launch_env: Mapping[str, str] | None) -> Any:
    from dataclasses import asdict

    from fedcompute import errors
    from fedcompute.process import spawn
    from fedcompute.protocol import packb, unpackb

    from .records import TaskResult

    # Inside, the task is an ordinary one: no container in a container; its MPI launch, if
    # any, arrives as environment variables (launch_env).
    inner = {**asdict(task), "resource_specification": None}
    request = packb({"task": inner, "body": body, "max_result_size": max_result_size})
    name = container_name("fedcompute-task") if spec.docker_like else None
    argv = run_argv(spec, [spec.python, "-m", "fedcompute.endpoint.containers"],
                    env=launch_env, interactive=True, name=name)
    timeout = task.walltime + START_SLACK if task.walltime else None
    with tempfile.TemporaryFile() as err:
        try:
            proc = spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
        except FileNotFoundError as exc:
            raise ContainerError(f"cannot run {spec.type!r}: {exc}; is it installed on the "
                                 "endpoint's workers?") from exc
        try:
            out, _ = proc.communicate(request, timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(proc, spec, name)
            raise errors.WalltimeExceeded(
                f"task ran past its walltime of {task.walltime}s (in container "
                f"{spec.image}) and its container was removed") from None
        except BaseException:
            _stop(proc, spec, name)
            raise
        err.seek(0)
        stderr = err.read().decode(errors="replace")[-4000:]
    if proc.returncode == 70 and task.walltime and not out:
        raise errors.WalltimeExceeded(f"task ran past its walltime of {task.walltime}s "
                                      f"(in container {spec.image})")
    try:
        reply = unpackb(out) if out else None
    except Exception:  # noqa: BLE001 - garbage on stdout: report what the container said
        reply = None
    if not isinstance(reply, dict) or reply.get("task_id") != task.task_id:
        raise ContainerError(
            f"{spec.type} container {spec.image} exited with code {proc.returncode} without "
            f"a result; its stderr:\n{stderr.strip() or '(empty)'}\ncommand: {shlex.join(argv)}")
    return TaskResult.from_wire(reply)


def _stop(proc: subprocess.Popen, spec: ContainerSpec, name: str | None) -> None:
    from fedcompute.process import stop

    try:
        os.killpg(proc.pid, 15)
    except (ProcessLookupError, PermissionError):
        pass
    stop(proc, timeout=10)
    _remove(spec, name)


def run_shell_in_container(spec: ContainerSpec, fn: Any, kwargs: Mapping[str, Any],
                           walltime: float | None = None,
                           launch_env: Mapping[str, str] | None = None) -> Any:
    """Run a ``ShellFunction``'s command in the container (``sh -c``); an ``MPIFunction``'s
    launcher starts the container once per rank. Returns a ``ShellResult`` with code 124 when
    the walltime (the function's or the task's, whichever is shorter) stopped it."""
    from collections import deque

    from fedcompute.mpi import MPIFunction
    from fedcompute.process import spawn
    from fedcompute.shell import ShellResult

    command = fn.cmd.format(**kwargs)
    env = {**(launch_env or {}), **(fn.env or {})}
    mpi = isinstance(fn, MPIFunction)
    prefix = env.get("FEDCOMPUTE_MPI_PREFIX") if mpi else None
    if mpi and not prefix:
        raise RuntimeError("MPIFunction needs an MPI launch: submit it with "
                           "resource_specification={'num_nodes': N, 'ranks_per_node': R, "
                           "'container': {...}}")
    # One container per rank cannot share a name; the launcher stops its ranks itself.
    name = container_name("fedcompute-shell") if spec.docker_like and not mpi else None
    # Each rank's identity (OMPI_COMM_WORLD_RANK, PMIX_RANK, SLURM_PROCID...) is set by the
    # launcher for the container's client: podman passes such prefixes on with "NAME*".
    ranks = RANK_ENV if mpi and spec.type != "docker" and spec.docker_like else ()
    argv = run_argv(spec, ["/bin/sh", "-c", command], env=env, pass_env=ranks, name=name,
                    workdir=fn.cwd)
    line = shlex.join(argv)
    if prefix:
        line = f"{prefix} {line}"
    limits = [w for w in (fn.walltime, walltime) if w]
    timeout = min(limits) if limits else None
    streams = [_stream(fn.stdout), _stream(fn.stderr)]
    try:
        try:
            proc = spawn(["/bin/sh", "-c", line], stdout=streams[0], stderr=streams[1],
                         env={**os.environ, **env} if prefix else None)
        except FileNotFoundError as exc:
            raise ContainerError(f"cannot run {spec.type!r}: {exc}") from exc
        timed_out = False
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _stop(proc, spec, name)
            code = 124
        except BaseException:
            _stop(proc, spec, name)
            raise
        keep = max(int(fn.snippet_lines), 0)
        texts = []
        for stream in streams:
            stream.seek(0)
            texts.append(b"".join(deque(stream, maxlen=keep)).decode(errors="replace")
                         if keep else "")
    finally:
        for stream in streams:
            stream.close()
    stdout, stderr = texts
    exception = None
    if timed_out:
        stderr += f"\ncommand timed out after {timeout}s"
        exception = "subprocess.TimeoutExpired"
    elif code:
        exception = "subprocess.CalledProcessError"
    return ShellResult(line, stdout, stderr, code, exception)


def _stream(path: str | None) -> Any:
    if path is None:
        return tempfile.TemporaryFile()
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    return open(path, "a+b")  # noqa: SIM115 - closed by run_shell_in_container


# --- the endpoint's workers in containers (local engine) ---------------------------------

def container_worker_class() -> type:
    """:class:`ContainerWorker`, a ``distributed.deploy.spec.ProcessInterface`` (made on first
    use: the task entry point below must import without Dask)."""
    global _ContainerWorker
    if _ContainerWorker is None:
        _ContainerWorker = _make_container_worker()
    return _ContainerWorker


_ContainerWorker: type | None = None


def _make_container_worker() -> type:
    import asyncio

    from distributed.deploy.spec import ProcessInterface

    class ContainerWorker(ProcessInterface):  # type: ignore[misc, valid-type]
        """A ``SpecCluster`` worker that is ``podman run ... IMAGE python -m
        distributed.cli.dask_worker SCHEDULER --nanny ...``: a Dask nanny and worker inside
        the image, on the host's network, bound to 127.0.0.1."""

        def __init__(self, scheduler: str, name: str, *, container: ContainerSpec,
                     nthreads: int = 1, memory_limit: str | int = "auto",
                     resources: Mapping[str, float] | None = None,
                     env: Mapping[str, str] | None = None, log_directory: str | None = None,
                     death_timeout: float = 60, host: str = "127.0.0.1"):
            super().__init__()
            self.scheduler = scheduler
            self.name = name
            self.spec = container_spec(container)
            self.container = container_name(f"fedcompute-worker-{name}") \
                if self.spec.docker_like else None
            command = [self.spec.python, "-m", "distributed.cli.dask_worker", scheduler,
                       "--name", str(name), "--nthreads", str(nthreads), "--nanny",
                       "--memory-limit", str(memory_limit), "--host", host,
                       "--death-timeout", str(int(death_timeout)), "--no-dashboard"]
            if resources:
                command += ["--resources", ",".join(f"{k}={v}" for k, v in resources.items())]
            self.argv = run_argv(self.spec, command, env=env, pass_env=JOB_ENV,
                                 name=self.container)
            self.log_path = Path(log_directory or tempfile.gettempdir()) / f"worker-{name}.log"
            self.proc: subprocess.Popen | None = None

        async def start(self) -> None:
            from fedcompute.process import spawn

            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "ab") as log:
                # Dies with the cluster's event-loop thread that starts it (SIGTERM, which
                # podman passes on to the container), even if the endpoint is SIGKILLed.
                self.proc = spawn(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT)
            await super().start()

        def exited(self) -> str | None:
            """Why the container exited (its log's end), or None while it runs."""
            if self.proc is None or self.proc.poll() is None:
                return None
            tail = self.log_path.read_text(errors="replace")[-3000:].strip()
            return (f"container worker {self.name} exited with code {self.proc.returncode}: "
                    f"{tail or '(no output)'}\ncommand: {shlex.join(self.argv)}")

        async def close(self) -> None:
            proc = self.proc
            if proc is not None and proc.poll() is None:
                from fedcompute.process import stop

                await asyncio.get_running_loop().run_in_executor(None, stop, proc, 20)
            if self.container:
                await asyncio.get_running_loop().run_in_executor(
                    None, _remove, self.spec, self.container)
            await super().close()

    return ContainerWorker


# --- entry point inside a task's container -----------------------------------------------

def main() -> int:
    """``python -m fedcompute.endpoint.containers``: read a task from stdin, run it, write its
    result to stdout. Anything the task itself prints to fd 1 goes to stderr instead."""
    from fedcompute.protocol import packb, unpackb

    from .records import LeasedTask
    from .runner import run_task

    request = unpackb(sys.stdin.buffer.read())
    result_fd = os.dup(1)
    os.dup2(2, 1)  # the task's prints (and its children's) cannot corrupt the result
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    result = run_task(LeasedTask(**request["task"]), request["body"],
                      int(request["max_result_size"]))
    with os.fdopen(result_fd, "wb") as out:
        out.write(packb(result.wire()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
