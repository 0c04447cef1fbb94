"""Batch-system engines: the shared core over dask-jobqueue.

(Longer than our ~400-line guide: it is dask-jobqueue's shared core, as ``core.py`` is there:
option checking, adaptive job bounds, job states from the batch system and the worker-loss
policy serve all seven batch systems, whose own files stay a few lines each.)

Each batch system is a small subclass (``slurm.py``, ``pbs.py``, ``sge.py``, ``lsf.py``,
``htcondor.py``, ``oar.py``, ``moab.py``) naming its dask-jobqueue cluster class and, where
known, how to ask the batch system for job states. The endpoint's ``engine:`` options pass
through to that class with dask-jobqueue's own names (``cores``, ``memory``, ``processes``,
``queue``, ``account``, ``walltime``, ``job_script_prologue``, ``job_extra_directives``,
``worker_extra_args``, ``interface``, ``scheduler_options``, ...) and are validated against its
signature. Options that are fedcompute's own:

``min_jobs`` / ``max_jobs``
    Bounds for Dask's ``Adaptive``: an idle endpoint holds ``min_jobs`` (default 0) jobs, a
    burst of work brings up to ``max_jobs`` (default 1) jobs.
``parallelism``
    As in Parsl/Globus Compute: the share of the endpoint's unfinished tasks to provide a
    worker thread for (default 1.0: one thread per task, up to ``max_jobs``; 0: one job while
    any task is unfinished). Adaptive also scales on the work and task durations Dask sees.
``adaptive``
    Extra ``distributed.deploy.Adaptive`` settings (``interval``, ``wait_count``,
    ``target_duration``).
``lifetime``
    ``auto`` (default): workers retire before the job's walltime (``--lifetime`` with
    ``--lifetime-stagger``), their running tasks are rescheduled by Dask and a fresh job is
    submitted if work remains. ``false``: off. A duration: that lifetime.
``worker_resources``
    Dask worker resources, e.g. ``{GPU: 1}``, matched by tasks'
    ``resource_specification``.
``allowed_failures``
    How many times a task may lose its worker (a job killed, preempted or past its walltime)
    before it fails (default 2).
``dashboard``
    The Dask dashboard, served on 127.0.0.1 and shown to the endpoint's users through the
    service: true starts it with the scheduler, unset on the first visit, false keeps it off.
``lost_job_timeout``
    Seconds a started job may have no connected worker before it is considered ended (10).

The scheduler binds 127.0.0.1 unless ``interface`` or ``scheduler_options`` say otherwise:
on a real cluster, set ``interface`` (e.g. ``ib0``) so that compute nodes can reach it.
"""

from __future__ import annotations

import asyncio
import difflib
import inspect
import logging
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import dask
from distributed.deploy import Adaptive

from .. import _compat
from ..containers import container_spec, worker_python
from ..launchers import LAUNCHER_ENV, check_launcher
from .base import DASK_CONFIG, Engine
from .refusals import JobRefusals, recording
from .resources import dask_resources, parse_duration, worker_resources_arg

log = logging.getLogger(__name__)

#: fedcompute's own options for batch engines (the rest go to dask-jobqueue).
ENGINE_OPTIONS = frozenset({
    "type", "min_jobs", "max_jobs", "adaptive", "lifetime", "worker_resources",
    "allowed_failures", "dashboard", "lost_job_timeout", "status_interval", "parallelism",
    "mpi_launcher",
})

#: dask-jobqueue parameters an endpoint does not pass: fedcompute sets them, or they are not
#: expressible in YAML. Values say what to use instead.
NOT_OPTIONS = {
    "scheduler": "it is the endpoint's own scheduler",
    "name": "use job_name for the batch job's name",
    "job_cls": "choose the engine type instead",
    "loop": None, "asynchronous": None, "scheduler_cls": None, "security": None,
    "n_workers": "use min_jobs / max_jobs",
    "host": "use scheduler_options: {host: ...} or interface",
    "dashboard_address": "use dashboard: true (127.0.0.1) or scheduler_options: "
                         "{dashboard_address: ...}",
    "extra": "use worker_extra_args (dask-jobqueue renamed it)",
    "env_extra": "use job_script_prologue (dask-jobqueue renamed it)",
    "job_extra": "use job_extra_directives (dask-jobqueue renamed it)",
    "header_skip": "use job_directives_skip (dask-jobqueue renamed it)",
}

#: Options whose value is a list of strings (dask-jobqueue would iterate over a string's
#: characters). ``job_extra_directives`` may also be a mapping (HTCondor).
LIST_OPTIONS = frozenset({"job_script_prologue", "job_extra_directives", "worker_extra_args",
                          "job_directives_skip"})

ADAPTIVE_OPTIONS = frozenset({"interval", "wait_count", "target_duration"})

PLACEHOLDER_ADDRESS = "tcp://<scheduler-address>:<port>"

# Normalized job states reported by ``status()``.
PENDING, RUNNING, ENDING, GONE = "pending", "running", "ending", "gone"


def _signature_names(cls: type, follow_kwargs: bool = True) -> set[str]:
    """Named parameters of ``cls.__init__`` and, with ``follow_kwargs``, of the base classes'
    ``__init__`` it passes ``**kwargs`` on to (dask-jobqueue's Job classes do)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names.update(p.name for p in params
                     if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self")
        if not follow_kwargs or not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


class JobQueueEngine(Engine):
    """A dask-jobqueue cluster scaled by Dask's ``Adaptive`` between ``min_jobs`` and
    ``max_jobs``. Subclasses set ``name`` and ``cluster_class_name``."""

    name = "jobqueue"
    #: e.g. ``"SLURMCluster"``: the class in ``dask_jobqueue``.
    cluster_class_name: ClassVar[str] = ""
    #: A bare number as walltime is in these seconds (Slurm and LSF: minutes).
    walltime_bare_unit: ClassVar[float] = 1.0
    #: How ``a:b`` walltimes read: ``"hms"`` (MM:SS, HH:MM:SS) or ``"hm"`` (LSF's HH:MM).
    walltime_colon_units: ClassVar[str] = "hms"
    #: Options that exist in dask-jobqueue but are deprecated for this system.
    deprecated: ClassVar[dict[str, str]] = {}

    def __init__(self, options: dict[str, Any], workdir: Path,
                 container: dict[str, Any] | None = None):
        super().__init__(options, workdir, container)
        self.cluster_kwargs = self.build_cluster_kwargs(self.options, self.workdir,
                                                        self.container)
        self.min_jobs, self.max_jobs = self._job_bounds(self.options)
        self.allowed_failures = self._int_option("allowed_failures", 2, minimum=0)
        self.lost_job_timeout = self._number_option("lost_job_timeout", 10.0)
        self.status_interval = self._number_option("status_interval", 5.0)
        self.parallelism = self.options.get("parallelism", 1.0)
        if isinstance(self.parallelism, bool) or not isinstance(self.parallelism, int | float) \
                or not 0 <= self.parallelism <= 1:
            raise ValueError(f"engine {self.name!r}: parallelism must be a number from 0 to 1, "
                             f"got {self.parallelism!r}")
        adaptive = self.options.get("adaptive") or {}
        if not isinstance(adaptive, dict) or set(adaptive) - ADAPTIVE_OPTIONS:
            bad = sorted(set(adaptive) - ADAPTIVE_OPTIONS) if isinstance(adaptive, dict) else []
            raise ValueError(f"engine {self.name!r}: adaptive must be a mapping with keys "
                             f"{', '.join(sorted(ADAPTIVE_OPTIONS))}"
                             + (f" (unknown: {', '.join(bad)})" if bad else ""))
        self.adaptive_options = {"interval": "1s", "wait_count": 3, **adaptive}
        self.adaptive: Adaptive | None = None
        self.outstanding = 0
        # Job bookkeeping, touched only on the cluster's event loop (and read by status()).
        self.job_states: dict[str, str] = {}
        self.job_states_from = "dask"
        self._seen: set[str] = set()
        self._disconnected_since: dict[str, float] = {}
        self._orphaned_since: dict[str, float] = {}
        self._first_noticed: dict[str, float] = {}
        self._last_poll = 0.0
        self._poll_started = 0.0
        # Fail now, not when the first job is submitted: builds a job script.
        self.job_script()

    # --- options -------------------------------------------------------------------------

    @classmethod
    def cluster_class(cls) -> type:
        """The dask-jobqueue cluster class (imported here: dask-jobqueue is an extra)."""
        try:
            import dask_jobqueue
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise ImportError(f"engine {cls.name!r} needs dask-jobqueue: "
                              "pip install 'fedcompute[jobqueue]'") from exc
        return getattr(dask_jobqueue, cls.cluster_class_name)

    @classmethod
    def jobqueue_options(cls) -> set[str]:
        """Option names this system's dask-jobqueue cluster and job classes accept."""
        klass = cls.cluster_class()
        # JobQueueCluster's own parameters; its **job_kwargs go to the job class.
        names = _signature_names(klass, follow_kwargs=False) | _signature_names(klass.job_cls)
        return names - set(NOT_OPTIONS) - set(cls.deprecated)

    @classmethod
    def known_options(cls) -> set[str]:
        return cls.jobqueue_options() | ENGINE_OPTIONS

    @classmethod
    def validate(cls, options: dict[str, Any]) -> None:
        """Raise ``ValueError`` naming the first unknown or badly typed option."""
        known = cls.known_options()
        for key in options:
            if key in known:
                continue
            hint = NOT_OPTIONS.get(key) or cls.deprecated.get(key)
            if not hint:
                close = difflib.get_close_matches(str(key), sorted(known), n=3, cutoff=0.6)
                hint = f"did you mean {' or '.join(map(repr, close))}?" if close else (
                    f"known options: {', '.join(sorted(known))}")
            raise ValueError(f"engine {cls.name!r}: unknown option {key!r}; {hint}")
        for key in LIST_OPTIONS & set(options):
            value = options[key]
            if key == "job_extra_directives" and isinstance(value, dict):
                continue
            if not isinstance(value, list) or not all(isinstance(v, str | int | float)
                                                      for v in value):
                raise ValueError(f"engine {cls.name!r}: {key} must be a list of strings, "
                                 f"got {value!r}")
        if "scheduler_options" in options and not isinstance(options["scheduler_options"], dict):
            raise ValueError(f"engine {cls.name!r}: scheduler_options must be a mapping")

    def _int_option(self, key: str, default: int, minimum: int = 0) -> int:
        value = self.options.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"engine {self.name!r}: {key} must be an integer >= {minimum}, "
                             f"got {value!r}")
        return value

    def _number_option(self, key: str, default: float) -> float:
        value = self.options.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ValueError(f"engine {self.name!r}: {key} must be a positive number of "
                             f"seconds, got {value!r}")
        return float(value)

    def _job_bounds(self, options: dict[str, Any]) -> tuple[int, int]:
        low = self._int_option("min_jobs", 0, minimum=0)
        high = self._int_option("max_jobs", max(1, low), minimum=1)
        if low > high:
            raise ValueError(f"engine {self.name!r}: min_jobs ({low}) > max_jobs ({high})")
        return low, high

    @classmethod
    def walltime_seconds(cls, options: dict[str, Any]) -> float | None:
        """The job's walltime in seconds (the option, else dask-jobqueue's default)."""
        value = options.get("walltime")
        if value is None:
            value = dask.config.get(f"jobqueue.{cls.cluster_class().job_cls.config_name}"
                                    ".walltime", None)
        if value is None:
            return None
        try:
            return parse_duration(value, cls.walltime_bare_unit, cls.walltime_colon_units)
        except ValueError as exc:
            raise ValueError(f"engine {cls.name!r}: walltime {value!r} is not a duration "
                             "the batch system understands (e.g. \"01:00:00\")") from exc

    @classmethod
    def lifetime_args(cls, options: dict[str, Any]) -> list[str]:
        """``--lifetime``/``--lifetime-stagger`` so that workers retire before the walltime.

        Every worker leaves between ``lifetime - stagger`` and ``lifetime + stagger``, at least
        ``margin`` seconds before its job is killed, so Dask moves its data and reschedules its
        running tasks, and Adaptive submits a fresh job while work remains.
        """
        setting = options.get("lifetime", "auto")
        extra = [str(a) for a in options.get("worker_extra_args") or []]
        if setting is False or any(a.startswith("--lifetime") for a in extra):
            return []
        if setting not in ("auto", None, True):
            try:
                lifetime = parse_duration(setting)
            except ValueError as exc:
                raise ValueError(f"engine {cls.name!r}: lifetime must be auto, false or a "
                                 f"duration such as 50m, got {setting!r}") from exc
            stagger = min(max(lifetime * 0.05, 1.0), 300.0)
            return ["--lifetime", f"{int(lifetime)}s", "--lifetime-stagger", f"{int(stagger)}s"]
        walltime = cls.walltime_seconds(options)
        if walltime is None:
            return []
        stagger = min(max(walltime * 0.05, 1.0), 300.0)
        margin = min(max(walltime * 0.05, 5.0), 120.0)
        lifetime = walltime - margin - stagger
        if lifetime - stagger < 10:
            log.warning("walltime %ss is too short for worker lifetimes; not setting one",
                        walltime)
            return []
        return ["--lifetime", f"{int(lifetime)}s", "--lifetime-stagger", f"{int(stagger)}s"]

    @classmethod
    def build_cluster_kwargs(cls, options: dict[str, Any], workdir: Path | None,
                             container: Any = None) -> dict:
        """Validated keyword arguments for the dask-jobqueue cluster class; with the
        endpoint's ``container``, the worker runs in its image."""
        options = dict(options or {})
        cls.validate(options)
        launcher = check_launcher(options.get("mpi_launcher"))
        container = container_spec(container) if container else None
        kwargs = {k: v for k, v in options.items() if k not in ENGINE_OPTIONS}
        for key in LIST_OPTIONS & set(kwargs):
            if isinstance(kwargs[key], list):
                kwargs[key] = [str(v) for v in kwargs[key]]
        scheduler_options = dict(kwargs.pop("scheduler_options", None) or {})
        # Bind the scheduler to loopback unless told where: never 0.0.0.0 by accident.
        if not kwargs.get("interface") and not {"host", "interface"} & set(scheduler_options):
            scheduler_options["host"] = "127.0.0.1"
        scheduler_options.setdefault("port", 0)
        # The scheduler always serves HTTP (health, metrics; the dashboard only if asked):
        # on loopback and a free port, not on :8787 of the scheduler's host.
        scheduler_options.setdefault("dashboard_address", "127.0.0.1:0")
        scheduler_options.setdefault("dashboard", bool(options.get("dashboard", False)))
        kwargs["scheduler_options"] = scheduler_options
        extra = list(kwargs.get("worker_extra_args") or [])
        extra += cls.lifetime_args(options)
        if options.get("worker_resources"):
            extra += worker_resources_arg(options["worker_resources"])
        kwargs["worker_extra_args"] = extra
        # Workers in jobs do not share this process's Dask config: pass the worker settings
        # every engine runs with (e.g. non-daemonic workers) as environment variables.
        exported = {_dask_env(key): str(value) for key, value in DASK_CONFIG.items()
                    if key.startswith("distributed.worker.")}
        if launcher != "auto":
            exported[LAUNCHER_ENV] = launcher
        kwargs["job_script_prologue"] = [
            f"export {name}={shlex.quote(value)}" for name, value in exported.items()
        ] + list(kwargs.get("job_script_prologue") or [])
        # exec: the worker replaces the job's shell, so the batch system's signals (scancel,
        # walltime) reach it and it stays in the job's process tree, killed with the job.
        if container is not None:
            if kwargs.get("python"):
                raise ValueError(f"engine {cls.name!r}: python names the host's interpreter, "
                                 "but the workers run in the endpoint's container: set "
                                 "container: {python: ...} instead")
            # Globus Compute style: the worker command, wrapped in `podman run ... IMAGE`.
            python = worker_python(container, exported)
        else:
            python = kwargs.get("python") or dask.config.get(
                f"jobqueue.{cls.cluster_class().job_cls.config_name}.python", None) \
                or sys.executable
        kwargs["python"] = python if str(python).startswith("exec ") else f"exec {python}"
        if workdir is not None:
            kwargs.setdefault("log_directory", str(Path(workdir) / "jobs"))
            kwargs.setdefault("job_name", f"fedcompute-{Path(workdir).name}")
        kwargs.setdefault("silence_logs", "error")
        return kwargs

    @classmethod
    def job_kwargs(cls, cluster_kwargs: dict[str, Any]) -> dict[str, Any]:
        """The subset of cluster kwargs the job class takes (what JobQueueCluster passes on)."""
        cluster_only = _signature_names(cls.cluster_class(), follow_kwargs=False) - {
            "interface", "protocol", "config_name"}
        return {k: v for k, v in cluster_kwargs.items() if k not in cluster_only}

    @classmethod
    def script_for(cls, options: dict[str, Any], workdir: Path | None = None,
                   address: str = PLACEHOLDER_ADDRESS, container: Any = None) -> str:
        """The batch script a job would be submitted with (no scheduler is started)."""
        kwargs = cls.build_cluster_kwargs(options, workdir, container)
        job_cls = cls.cluster_class().job_cls
        try:
            # dask-jobqueue builds the script when a Job is made (and creates log_directory).
            job = job_cls(address, name="dummy-name", **cls.job_kwargs(kwargs))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"engine {cls.name!r}: {exc}") from exc
        return job.job_script()

    def job_script(self) -> str:
        """The batch script: the running cluster's own, or one with a placeholder address."""
        if self.cluster is not None:
            return self.cluster.job_script()
        return self.script_for(self.options, self.workdir, container=self.container)

    # --- lifecycle -----------------------------------------------------------------------

    def make_cluster(self):
        Path(self.cluster_kwargs.get("log_directory") or self.workdir).mkdir(
            parents=True, exist_ok=True)
        self.refusals = JobRefusals()
        job_cls = recording(self.cluster_class().job_cls, self.refusals)
        kwargs = dict(self.cluster_kwargs)
        kwargs["scheduler_options"] = {"http_prefix": self.http_prefix,
                                       **kwargs["scheduler_options"]}
        cluster = self.cluster_class()(job_cls=job_cls, **kwargs)
        # A batch job's worker may be killed (scancel, preemption, walltime): its tasks are
        # retried on other workers this many times before they fail as KilledWorker.
        cluster.scheduler.allowed_failures = self.allowed_failures
        self.cluster = cluster
        self.adaptive = cluster.adapt(
            Adaptive=_JobAdaptive, engine=self,
            minimum_jobs=self.min_jobs, maximum_jobs=self.max_jobs, **self.adaptive_options)
        return cluster

    def scale_for(self, outstanding_tasks: int) -> None:
        """Hint from the agent: tasks leased and not finished. The agent packs short tasks into
        few Dask tasks, so Dask alone would under-count a burst: Adaptive's target is at least
        ``parallelism`` × these tasks' worth of worker threads (at least one job while any is
        unfinished, 0 when none), within ``min_jobs``..``max_jobs``."""
        self.outstanding = max(0, int(outstanding_tasks))

    def hint_workers(self) -> int:
        """Workers (Dask processes) wanted for the outstanding tasks."""
        if self.outstanding <= 0 or self.cluster is None:
            return 0
        job = _compat.job_template(self.cluster)
        threads = max(1, int(job.worker_process_threads))
        wanted = math.ceil(self.outstanding * self.parallelism / threads)
        return max(int(job.worker_processes), wanted)

    def close(self) -> None:
        if self.adaptive is not None:
            self.adaptive.stop(reason="engine-close")
        super().close()

    # --- job states ----------------------------------------------------------------------

    def job_states_command(self, job_ids: list[str]) -> list[str] | None:
        """The batch system's command listing these jobs' states (None: ask Dask only)."""
        return None

    def parse_job_states(self, output: str, job_ids: list[str]) -> dict[str, str]:
        """Job id → ``pending``/``running``/``ending`` from the command's output; jobs
        missing from the answer have ended."""
        raise NotImplementedError

    def _jobs(self) -> dict[str, Any]:
        """Job name → dask-jobqueue Job, for jobs that were submitted."""
        cluster = self.cluster
        return {} if cluster is None else {
            name: job for name, job in list(cluster.workers.items()) if getattr(job, "job_id", None)}

    def _connected_jobs(self) -> set[str]:
        """Names of jobs with at least one worker connected to the scheduler."""
        cluster = self.cluster
        if cluster is None:
            return set()
        spec = dict(cluster.worker_spec)
        names = {ws.name for ws in list(cluster.scheduler.workers.values())}
        connected = set()
        for job, job_spec in spec.items():
            group = job_spec.get("group") if isinstance(job_spec, dict) else None
            members = {f"{job}{g}" for g in group} if group else {job}
            if members & {str(n) for n in names}:
                connected.add(job)
        return connected

    async def poll_job_states(self) -> None:
        """Ask the batch system for the states of our jobs (on the cluster's loop)."""
        jobs = self._jobs()
        ids = sorted({job.job_id for job in jobs.values()})
        command = self.job_states_command(ids) if ids else None
        self._poll_started = time.time()
        if not ids:
            self.job_states = {}
            return
        if command is None:
            return
        try:
            proc = await asyncio.create_subprocess_exec(
                *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
        except (OSError, TimeoutError) as exc:
            log.warning("%s failed: %s", command[0], exc)
            return
        if proc.returncode != 0 and not out.strip():
            # e.g. squeue: "Invalid job id specified" once every job is gone.
            log.debug("%s exited %s: %s", command[0], proc.returncode, err.decode().strip())
            if b"nvalid job" not in err and b"do not exist" not in err:
                return
        states = self.parse_job_states(out.decode(), ids)
        self.job_states = states
        self.job_states_from = command[0]

    def forget_ended_jobs(self) -> list[str]:
        """Drop jobs that ended (walltime, lifetime, scancel, failure) from the cluster's plan,
        so that Adaptive submits new ones while work remains. Runs on the cluster's loop."""
        cluster = self.cluster
        if cluster is None or _compat.is_rescaling(cluster):
            return []
        now = time.time()
        connected = self._connected_jobs()
        jobs = self._jobs()
        ended = []
        for name in list(cluster.worker_spec):
            job = jobs.get(name)
            if getattr(cluster.workers.get(name), "refused", False):
                ended.append(name)  # the batch system refused it: Adaptive asks again
                continue
            if job is None:
                # Not (or no longer) submitted: SpecCluster dropped a lost worker's job.
                if name in self._seen and name not in connected:
                    ended.append(name)
                continue
            job_id = job.job_id
            if job_id not in self._first_noticed:
                self._first_noticed[job_id] = now
                self._last_poll = 0.0  # a new job: ask the batch system at the next round
            gone = (self.job_states_from != "dask"
                    and self._poll_started > self._first_noticed[job_id] + 0.5
                    and self.job_states.get(job_id, GONE) == GONE)
            if name in connected:
                self._seen.add(name)
                self._disconnected_since.pop(name, None)
                if not gone:
                    self._orphaned_since.pop(name, None)
                    continue
                # The batch system ended the job but its worker still runs (a process that
                # escaped the job's process tracking): it is outside any allocation now.
                since = self._orphaned_since.setdefault(name, now)
                if now - since >= self.lost_job_timeout:
                    log.warning("job %s ended but its worker is still connected; stopping it",
                                job_id)
                    self._stop_workers_of(name)
                    ended.append(name)
                continue
            if name in self._seen:
                if name not in self._disconnected_since:
                    self._disconnected_since[name] = now
                    self._last_poll = 0.0  # ask the batch system at once
                since = self._disconnected_since[name]
                if gone or now - since >= self.lost_job_timeout:
                    ended.append(name)
            elif gone:
                log.warning("job %s ended before its worker connected; see %s", job_id,
                            self.cluster_kwargs.get("log_directory") or "the job's output")
                ended.append(name)
        for name in ended:
            cluster.worker_spec.pop(name, None)
            self._seen.discard(name)
            self._disconnected_since.pop(name, None)
            self._orphaned_since.pop(name, None)
            log.info("job %s ended; Adaptive will replace it while work remains", name)
        # Forget jobs Adaptive retired itself.
        self._seen &= set(cluster.worker_spec)
        for job_id in set(self._first_noticed) - {job.job_id for job in jobs.values()}:
            del self._first_noticed[job_id]
        if ended:
            _compat.correct_state(cluster)  # closes (cancels) what is left of those jobs
        return ended

    def _stop_workers_of(self, job_name: str) -> None:
        """Remove (and close) the Dask workers of one job; their tasks are rescheduled."""
        scheduler = self.cluster.scheduler
        spec = self.cluster.worker_spec.get(job_name) or {}
        group = spec.get("group") if isinstance(spec, dict) else None
        names = {f"{job_name}{g}" for g in group} if group else {str(job_name)}
        for address, ws in list(scheduler.workers.items()):
            if str(ws.name) in names:
                asyncio.ensure_future(scheduler.remove_worker(
                    address, stimulus_id=f"fedcompute-job-ended-{time.time()}", close=True))

    def status(self) -> dict[str, Any]:
        jobs = self._jobs()
        connected = self._connected_jobs()
        states: dict[str, str] = {}
        for name, job in jobs.items():
            state = self.job_states.get(job.job_id) if self.job_states_from != "dask" else None
            if state in (None, GONE):
                state = RUNNING if name in connected else (ENDING if name in self._seen
                                                           else PENDING)
            states[job.job_id] = state
        return {
            "engine": self.name,
            "workers": self.worker_count(),
            "jobs_pending": sum(s == PENDING for s in states.values()),
            "jobs_running": sum(s in (RUNNING, ENDING) for s in states.values()),
            "jobs": states,
            "job_states_from": self.job_states_from,
            "min_jobs": self.min_jobs,
            "max_jobs": self.max_jobs,
            "outstanding": self.outstanding,
            **self._refusal_status(),
        }

    def _refusal_status(self) -> dict[str, Any]:
        streak = self.job_refusal()
        if streak is None:
            return {}
        seconds, count, error = streak
        return {"jobs_refused": count, "jobs_refused_for": round(seconds, 1),
                "job_error": error}

    def job_refusal(self) -> tuple[float, int, str] | None:
        """Job submissions failing in a row: ``(seconds, count, the scheduler's error)``."""
        refusals = getattr(self, "refusals", None)
        return refusals.streak() if refusals is not None else None


class _JobAdaptive(Adaptive):
    """Dask's Adaptive, plus: at least one job while the agent holds unfinished tasks, jobs
    that ended are replaced, and the batch system is asked for job states now and then."""

    def __init__(self, *args: Any, engine: JobQueueEngine, **kwargs: Any):
        self.engine = engine
        super().__init__(*args, **kwargs)

    async def target(self) -> int:
        return max(await super().target(), self.engine.hint_workers())

    async def adapt(self) -> None:
        engine = self.engine
        if time.time() - engine._last_poll >= engine.status_interval:
            engine._last_poll = time.time()
            try:
                await engine.poll_job_states()
            except Exception as exc:  # noqa: BLE001 - scaling must go on
                log.warning("polling job states failed: %s", exc)
        try:
            engine.forget_ended_jobs()
        except Exception as exc:  # noqa: BLE001
            log.warning("checking for ended jobs failed: %s", exc)
        await super().adapt()


def _dask_env(key: str) -> str:
    """``distributed.worker.memory.target`` → ``DASK_DISTRIBUTED__WORKER__MEMORY__TARGET``."""
    return "DASK_" + key.upper().replace(".", "__").replace("-", "_")


def engine_for(options: dict[str, Any]) -> type[JobQueueEngine]:
    from . import engine_class

    kind = (options or {}).get("type", "local")
    cls = engine_class(kind)
    if not issubclass(cls, JobQueueEngine):
        raise ValueError(f"engine {kind!r} submits no batch jobs")
    return cls


def job_script(options: dict[str, Any], workdir: Path | None = None,
               container: dict[str, Any] | None = None) -> str:
    """The batch script an endpoint with these ``engine:`` options would submit."""
    return engine_for(options).script_for(options, workdir, container=container)


def validate_options(options: dict[str, Any], container: dict[str, Any] | None = None) -> None:
    """Raise ``ValueError`` if these ``engine:`` options would not make a working engine."""
    engine_for(options).build_cluster_kwargs(options, None, container)


__all__ = ["ENGINE_OPTIONS", "JobQueueEngine", "dask_resources", "job_script",
           "validate_options"]
