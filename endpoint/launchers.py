"""MPI launch prefixes: a task's ``num_nodes`` / ``ranks_per_node`` / ``num_ranks`` →
``srun ...`` or ``mpiexec ...``, as Globus Compute's MPI engine (Parsl's) does.

``resource_specification={"num_nodes": 2, "ranks_per_node": 4}`` gives the task the launcher
prefix for 8 ranks on 2 nodes of the batch job its worker runs in, as ``$FEDCOMPUTE_MPI_PREFIX``
(and Parsl's ``$PARSL_MPI_PREFIX``); ``MPIFunction("app args")`` runs ``<prefix> app args``.

The first part is pure (unit-tested); the last part runs inside a Dask worker: it finds the
nodes of the worker's batch job and lends them out, so that MPI tasks running at once in one
worker never share a node.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shlex
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: resource_specification keys that describe an MPI launch (Globus Compute's names).
MPI_KEYS = frozenset({"num_nodes", "ranks_per_node", "num_ranks", "launcher_options"})

#: ``mpi_launcher`` settings: ``auto`` (``srun`` inside a Slurm job, else ``mpiexec``), a
#: launcher, or a template with ``{num_ranks}``, ``{ranks_per_node}``, ``{num_nodes}``,
#: ``{nodelist}`` (comma-separated), ``{hosts}`` (space-separated), ``{launcher_options}``.
#: ``mpiexec``/``mpirun`` take Open MPI's or MPICH's (Hydra, Cray PALS, Intel) flags,
#: whichever the installed one is; ``openmpi`` / ``mpich`` say which without asking.
LAUNCHERS = ("auto", "srun", "mpiexec", "mpirun", "openmpi", "mpich", "aprun")

#: Environment variable through which engines tell their workers the endpoint's setting.
LAUNCHER_ENV = "FEDCOMPUTE_MPI_LAUNCHER"


@dataclass(frozen=True)
class MPIRequest:
    """One task's MPI launch: ``num_ranks`` ranks, at most ``ranks_per_node`` per node, on
    ``num_nodes`` nodes, plus the user's extra ``launcher_options``."""

    num_nodes: int
    ranks_per_node: int
    num_ranks: int
    launcher_options: str = ""


def _count(spec: Mapping[str, Any], key: str) -> int | None:
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"resource_specification[{key!r}] must be a positive integer, "
                         f"got {value!r}")
    return value


def mpi_request(resource_specification: Mapping[str, Any] | None) -> MPIRequest | None:
    """The MPI launch a ``resource_specification`` asks for, or ``None`` if it has no MPI key.

    Missing counts follow from the others (as in Parsl): ``num_ranks`` = nodes × ranks per
    node; ``ranks_per_node`` = ranks / nodes, rounded up; ``num_nodes`` = 1, or ranks / ranks
    per node. Raises ``ValueError`` naming the key for anything inconsistent.
    """
    spec = resource_specification or {}
    if not MPI_KEYS & set(spec):
        return None
    nodes, per_node, ranks = (_count(spec, k) for k in ("num_nodes", "ranks_per_node",
                                                         "num_ranks"))
    if nodes is None:
        nodes = math.ceil(ranks / per_node) if ranks and per_node else 1
    if per_node is None:
        per_node = math.ceil(ranks / nodes) if ranks else 1
    if ranks is None:
        ranks = nodes * per_node
    if ranks > nodes * per_node:
        raise ValueError(f"resource_specification: num_ranks {ranks} does not fit on num_nodes "
                         f"{nodes} × ranks_per_node {per_node}")
    options = spec.get("launcher_options") or ""
    if isinstance(options, list | tuple) and all(isinstance(o, str) for o in options):
        options = shlex.join(options)
    if not isinstance(options, str):
        raise ValueError("resource_specification['launcher_options'] must be a string or a "
                         f"list of strings, got {options!r}")
    return MPIRequest(nodes, per_node, ranks, options.strip())


def check_launcher(setting: Any) -> str:
    """Validate an ``mpi_launcher`` setting (engine option); returns it."""
    if setting is None:
        return "auto"
    if not isinstance(setting, str) or not setting.strip():
        raise ValueError(f"mpi_launcher must be one of {', '.join(LAUNCHERS)} or a template "
                         f"string, got {setting!r}")
    if "{" in setting:
        try:
            _format_template(setting, MPIRequest(1, 1, 1), ["localhost"])
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"mpi_launcher template {setting!r}: unknown or bad field {exc}; "
                             "fields: {num_ranks} {ranks_per_node} {num_nodes} {nodelist} "
                             "{hosts} {launcher_options}") from exc
        return setting
    if setting not in LAUNCHERS:
        import difflib

        close = difflib.get_close_matches(setting, LAUNCHERS, n=1)
        raise ValueError(f"unknown mpi_launcher {setting!r}"
                         + (f"; did you mean {close[0]!r}?" if close else "")
                         + f" (choose {', '.join(LAUNCHERS)}, or a template with {{num_ranks}})")
    return setting


def resolve_launcher(setting: str, environ: Mapping[str, str]) -> str:
    """``auto`` → ``srun`` inside a Slurm job, ``mpiexec`` elsewhere; others unchanged."""
    if setting != "auto":
        return setting
    return "srun" if environ.get("SLURM_JOB_ID") else "mpiexec"


def flavor_from_version(text: str) -> str:
    """``mpiexec --version`` output → ``openmpi`` or ``mpich`` (Hydra, PALS, Intel MPI...)."""
    return "openmpi" if re.search(r"Open ?MPI|OpenRTE", text, re.IGNORECASE) else "mpich"


def _format_template(template: str, request: MPIRequest, nodes: Sequence[str]) -> str:
    return template.format(num_ranks=request.num_ranks, ranks_per_node=request.ranks_per_node,
                           num_nodes=request.num_nodes, nodelist=",".join(nodes),
                           hosts=" ".join(nodes), launcher_options=request.launcher_options)


def compose_prefix(launcher: str, request: MPIRequest, nodes: Sequence[str],
                   flavor: str | None = None) -> str:
    """The command prefix that starts ``request`` on ``nodes``.

    ``launcher`` is resolved (not ``auto``); ``flavor`` (``openmpi``/``mpich``) says which
    flags ``mpiexec``/``mpirun`` take (default: MPICH's, as in Parsl).
    """
    if len(nodes) != request.num_nodes:
        raise ValueError(f"{request.num_nodes} nodes asked, {len(nodes)} given")
    if "{" in launcher:
        return _format_template(launcher, request, nodes).strip()
    n, ppn, hosts = str(request.num_ranks), str(request.ranks_per_node), ",".join(nodes)
    if launcher == "srun":
        args = ["srun", f"--ntasks={n}", f"--ntasks-per-node={ppn}",
                f"--nodes={request.num_nodes}", f"--nodelist={hosts}"]
    elif launcher == "aprun":
        args = ["aprun", "-n", n, "-N", ppn, "-node-list", hosts]
    elif launcher == "openmpi" or (launcher in ("mpiexec", "mpirun") and flavor == "openmpi"):
        # Open MPI: "host:slots" caps the ranks per node (and lets a node take more ranks than
        # it has cores, as other launchers do when told -ppn).
        program = "mpirun" if launcher == "mpirun" else "mpiexec"
        args = [program, "-n", n, "--host", ",".join(f"{h}:{ppn}" for h in nodes)]
    elif launcher in ("mpich", "mpiexec", "mpirun"):
        program = "mpirun" if launcher == "mpirun" else "mpiexec"
        args = [program, "-n", n, "-ppn", ppn, "-hosts", hosts]
    else:
        raise ValueError(f"unknown MPI launcher {launcher!r}")
    prefix = shlex.join(args)
    return f"{prefix} {request.launcher_options}" if request.launcher_options else prefix


def launch_environment(prefix: str, request: MPIRequest, nodes: Sequence[str],
                       as_root: bool = False) -> dict[str, str]:
    """Variables a task sees: ``FEDCOMPUTE_MPI_PREFIX`` and its Parsl/Globus Compute alias
    ``PARSL_MPI_PREFIX``, the counts and the node list under both names, and, for root,
    what Open MPI needs before it runs as root."""
    env: dict[str, str] = {}
    values = {"MPI_PREFIX": prefix, "NUM_NODES": str(request.num_nodes),
              "RANKS_PER_NODE": str(request.ranks_per_node),
              "NUM_RANKS": str(request.num_ranks), "MPI_NODELIST": ",".join(nodes)}
    for name, value in values.items():
        env[f"FEDCOMPUTE_{name}"] = value
        env[f"PARSL_{name}"] = value
    if as_root:
        # Open MPI refuses to start as root without both (mpirun --allow-run-as-root).
        env["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    return env


_BRACKETS = re.compile(r"\[([^\]]*)\]")


def expand_hostlist(text: str) -> list[str]:
    """Slurm's compressed host list → host names: ``"n[01-03,07],gpu1"`` →
    ``["n01", "n02", "n03", "n07", "gpu1"]`` (what ``scontrol show hostnames`` prints)."""
    hosts: list[str] = []
    depth, start = 0, 0
    parts = []
    for i, ch in enumerate(text):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    for part in filter(None, (p.strip() for p in parts)):
        match = _BRACKETS.search(part)
        if not match:
            hosts.append(part)
            continue
        head, tail = part[:match.start()], part[match.end():]
        for item in match.group(1).split(","):
            low, _, high = item.partition("-")
            if not high:
                hosts.extend(expand_hostlist(head + low + tail))
                continue
            width = len(low)
            for number in range(int(low), int(high) + 1):
                hosts.extend(expand_hostlist(f"{head}{number:0{width}d}{tail}"))
    return hosts


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(i for i in items if i))


def batch_nodes(environ: Mapping[str, str],
                read: Callable[[str], str] = lambda p: Path(p).read_text()) -> list[str]:
    """The nodes of the batch job this process runs in (Slurm, PBS, Grid Engine, LSF, OAR),
    in the batch system's order; ``["localhost"]`` outside a batch job."""
    if environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST"):
        return _unique(expand_hostlist(environ.get("SLURM_JOB_NODELIST")
                                       or environ["SLURM_NODELIST"]))
    for var in ("PBS_NODEFILE", "OAR_NODEFILE"):
        if environ.get(var):
            return _unique([line.strip() for line in read(environ[var]).splitlines()])
    if environ.get("PE_HOSTFILE"):  # Grid Engine: "host slots queue processors"
        return _unique([line.split()[0] for line in read(environ["PE_HOSTFILE"]).splitlines()
                        if line.strip()])
    if environ.get("LSB_MCPU_HOSTS"):  # LSF: "host1 4 host2 4"
        return _unique(environ["LSB_MCPU_HOSTS"].split()[::2])
    if environ.get("LSB_HOSTS"):
        return _unique(environ["LSB_HOSTS"].split())
    return ["localhost"]


# --- inside a Dask worker ---------------------------------------------------------------

class NodePool:
    """The nodes of this worker's batch job, lent to the MPI tasks it runs: tasks running at
    once get disjoint nodes; a task waits while others hold the nodes it needs."""

    def __init__(self, nodes: Sequence[str]):
        self.nodes = list(nodes)
        self.free = list(nodes)
        self.cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, count: int) -> Iterator[list[str]]:
        if count > len(self.nodes):
            raise ValueError(
                f"the task asks for num_nodes={count}, but this worker's batch job has "
                f"{len(self.nodes)} node(s) ({', '.join(self.nodes)}); ask for fewer, or give "
                "the endpoint's jobs more nodes (e.g. Slurm: job_extra_directives: "
                f"[\"--nodes={count}\"])")
        with self.cond:
            self.cond.wait_for(lambda: len(self.free) >= count)
            taken, self.free = self.free[:count], self.free[count:]
        try:
            yield taken
        finally:
            with self.cond:
                self.free = [n for n in self.nodes if n in self.free or n in taken]
                self.cond.notify_all()


_pool: NodePool | None = None
_flavors: dict[str, str] = {}
_lock = threading.Lock()


def _node_pool() -> NodePool:
    global _pool
    with _lock:
        if _pool is None:
            _pool = NodePool(batch_nodes(os.environ))
        return _pool


def _flavor(program: str) -> str | None:
    """Open MPI or MPICH, from ``program --version`` (asked once per worker process)."""
    with _lock:
        if program not in _flavors:
            text = ""
            if shutil.which(program):
                try:
                    done = subprocess.run([program, "--version"], capture_output=True,
                                          text=True, timeout=30)
                    text = done.stdout + done.stderr
                except (OSError, subprocess.TimeoutExpired):
                    text = ""
            _flavors[program] = flavor_from_version(text) if text else "mpich"
        return _flavors[program]


@contextlib.contextmanager
def mpi_launch(request: MPIRequest,
               setting: str | None = None) -> Iterator[dict[str, str]]:
    """Hold nodes for ``request`` and yield the task's launch variables
    (``FEDCOMPUTE_MPI_PREFIX``...). ``setting`` defaults to ``$FEDCOMPUTE_MPI_LAUNCHER``."""
    launcher = resolve_launcher(check_launcher(setting or os.environ.get(LAUNCHER_ENV)),
                                os.environ)
    flavor = _flavor(launcher) if launcher in ("mpiexec", "mpirun") else None
    with _node_pool().hold(request.num_nodes) as nodes:
        prefix = compose_prefix(launcher, request, nodes, flavor)
        yield launch_environment(prefix, request, nodes, as_root=os.geteuid() == 0)


def needs_launch(resource_specification: Mapping[str, Any] | None) -> bool:
    """Whether a task runs through :func:`run_launched` (MPI keys or a ``container``)."""
    spec = resource_specification or {}
    return bool(MPI_KEYS & set(spec)) or "container" in spec


def run_launched(task: Any, body: bytes, max_result_size: int,
                 run: Callable[[Any, bytes, int], Any]) -> Any:
    """Run a task whose ``resource_specification`` has MPI keys and/or a ``container``: hold
    its nodes and expose its launcher prefix, then run it in its container, or here with
    ``run`` (the runner's ``run_task``). Returns its ``TaskResult``; never raises."""
    import dataclasses
    import time

    from fedcompute.mpi import current_launch

    from .containers import container_spec, run_task_in_container
    from .records import TaskResult

    started = time.time()
    spec = task.resource_specification or {}
    try:
        request = mpi_request(spec)
        container = (container_spec(spec["container"], "resource_specification['container']")
                     if spec.get("container") is not None else None)
        with mpi_launch(request) if request else contextlib.nullcontext({}) as env:
            if container is not None:
                return run_task_in_container(container, task, body, max_result_size, env)
            # Here: MPIFunction reads the launch from the context variable (this thread's
            # task); Python functions read os.environ, shared by the worker's threads.
            token = current_launch.set(env)
            saved = {key: os.environ.get(key) for key in env}
            os.environ.update(env)
            try:
                return run(dataclasses.replace(task, resource_specification=None), body,
                           max_result_size)
            finally:
                current_launch.reset(token)
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
    except BaseException as exc:  # noqa: BLE001 - a failure is a result too
        result = TaskResult.failure(task.task_id, exc)
        result.started = started
        return result
