"""Unit tests of the batch engines: option validation, job scripts, templates, walltimes,
resources and job-state parsing, for all seven batch systems. No batch system is needed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from fedcompute.endpoint.cli import endpoint as endpoint_cli
from fedcompute.endpoint.config import EndpointConfig
from fedcompute.endpoint.engines import ENGINES, engine_class, get_engine
from fedcompute.endpoint.engines.jobqueue import (
    ENGINE_OPTIONS,
    JobQueueEngine,
    job_script,
    validate_options,
)
from fedcompute.endpoint.engines.resources import dask_resources, parse_duration
from fedcompute.endpoint.engines.sge import parse_qstat
from fedcompute.endpoint.engines.slurm import parse_squeue

TEMPLATES = Path(__file__).resolve().parents[3] / "endpoint" / "templates"
BATCH = ["slurm", "pbs", "sge", "lsf", "htcondor", "oar", "moab"]
#: the directive prefix of each system's job script
DIRECTIVE = {"slurm": "#SBATCH", "pbs": "#PBS", "sge": "#$", "lsf": "#BSUB", "oar": "#OAR",
             "moab": "#PBS", "htcondor": "Request"}
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # dask-jobqueue's OAR warning


def base(kind: str, **extra) -> dict:
    options = {"type": kind, "cores": 2, "memory": "4GB"}
    if kind == "htcondor":
        options["disk"] = "1GB"
    return {**options, **extra}


# --- dispatch ------------------------------------------------------------------------------

def test_every_batch_system_has_an_engine():
    assert set(BATCH) | {"local", "kubernetes"} == set(ENGINES)
    for kind in BATCH:
        cls = engine_class(kind)
        assert issubclass(cls, JobQueueEngine) and cls.name == kind
        assert cls.cluster_class().__name__.lower().startswith(kind[:3])


def test_get_engine_defaults_to_local(tmp_path):
    assert get_engine({}, tmp_path).name == "local"
    with pytest.raises(ValueError, match="unknown engine type 'slurmm'"):
        get_engine({"type": "slurmm"}, tmp_path)


# --- validation ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", BATCH)
def test_dask_jobqueue_names_pass_through(kind, tmp_path):
    engine = get_engine(base(kind, processes=2, job_script_prologue=["echo prologue-line"],
                             worker_extra_args=["--no-dashboard"], interface="lo",
                             death_timeout=30, job_name="myjob"), tmp_path)
    script = engine.job_script()
    assert "echo prologue-line" in script
    assert "--no-dashboard" in script and "--interface lo" in script
    assert "--death-timeout 30" in script
    assert "--nworkers 2" in script and "--nthreads 1" in script
    assert engine.cluster_kwargs["scheduler_options"] == {
        "port": 0, "dashboard_address": "127.0.0.1:0", "dashboard": False}


@pytest.mark.parametrize("kind", BATCH)
def test_unknown_option_is_named_with_close_matches(kind, tmp_path):
    with pytest.raises(ValueError) as info:
        get_engine(base(kind, job_script_prolog=["x"]), tmp_path)
    message = str(info.value)
    assert f"engine {kind!r}: unknown option 'job_script_prolog'" in message
    assert "did you mean 'job_script_prologue'" in message


def test_unknown_option_without_close_match_lists_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown option 'frobnicate'; known options: .*cores"):
        get_engine(base("slurm", frobnicate=1), tmp_path)


@pytest.mark.parametrize(("key", "hint"), [
    ("env_extra", "job_script_prologue"), ("extra", "worker_extra_args"),
    ("job_extra", "job_extra_directives"), ("header_skip", "job_directives_skip"),
    ("host", "scheduler_options"), ("dashboard_address", "dashboard: true"),
    ("n_workers", "min_jobs"), ("project", "account"), ("name", "job_name"),
])
def test_deprecated_and_reserved_options_say_what_to_use(key, hint, tmp_path):
    with pytest.raises(ValueError, match=re.escape(hint)):
        get_engine(base("slurm", **{key: "x"}), tmp_path)


def test_system_specific_options(tmp_path):
    # account is Slurm's/PBS's, not SGE's; disk is HTCondor's; resource_spec not Slurm's.
    get_engine(base("slurm", account="a", queue="q"), tmp_path)
    get_engine(base("pbs", account="a", resource_spec="select=1"), tmp_path)
    get_engine(base("lsf", ncpus=2, mem=4_000_000_000, lsf_units="MB"), tmp_path)
    for kind, key in (("sge", "account"), ("slurm", "resource_spec"), ("slurm", "disk")):
        with pytest.raises(ValueError, match=f"unknown option '{key}'"):
            get_engine(base(kind, **{key: "x"}), tmp_path)


@pytest.mark.parametrize("bad", [
    {"job_extra_directives": "--gres=gpu:1"}, {"job_script_prologue": "module load x"},
    {"worker_extra_args": {"a": 1}}, {"min_jobs": -1}, {"max_jobs": 0}, {"max_jobs": "2"},
    {"min_jobs": 3, "max_jobs": 2}, {"allowed_failures": True}, {"adaptive": {"intervl": 1}},
    {"scheduler_options": ["x"]}, {"worker_resources": {"GPU": -1}}, {"memory": "lots"},
    {"walltime": "forever"},
])
def test_bad_values_are_refused(bad, tmp_path):
    with pytest.raises(ValueError, match="engine 'slurm'|resource|duration"):
        get_engine(base("slurm", **bad), tmp_path)


def test_cores_and_memory_are_required(tmp_path):
    with pytest.raises(ValueError, match="cores and memory"):
        get_engine({"type": "slurm", "cores": 1}, tmp_path)
    with pytest.raises(ValueError, match="disk"):
        get_engine({"type": "htcondor", "cores": 1, "memory": "1GB"}, tmp_path)


def test_validate_options_does_not_touch_disk():
    validate_options(base("sge"))
    with pytest.raises(ValueError, match="submits no batch jobs"):
        validate_options({"type": "local"})


def test_engine_options_are_not_passed_to_dask_jobqueue(tmp_path):
    engine = get_engine(base("slurm", min_jobs=1, max_jobs=3, lifetime=False,
                             allowed_failures=5, dashboard=True, lost_job_timeout=3,
                             adaptive={"interval": "2s", "wait_count": 5}), tmp_path)
    assert not ENGINE_OPTIONS & set(engine.cluster_kwargs)
    assert (engine.min_jobs, engine.max_jobs, engine.allowed_failures) == (1, 3, 5)
    assert engine.adaptive_options == {"interval": "2s", "wait_count": 5}
    assert engine.cluster_kwargs["scheduler_options"]["dashboard"] is True
    assert engine.cluster_kwargs["scheduler_options"]["dashboard_address"] == "127.0.0.1:0"


# --- network binding -----------------------------------------------------------------------

def test_scheduler_binds_loopback_by_default(tmp_path):
    opts = get_engine(base("slurm"), tmp_path).cluster_kwargs["scheduler_options"]
    assert opts["host"] == "127.0.0.1"
    assert "0.0.0.0" not in str(opts)


def test_scheduler_binds_the_configured_interface_or_host(tmp_path):
    by_interface = get_engine(base("slurm", interface="ib0"), tmp_path).cluster_kwargs
    assert by_interface["interface"] == "ib0"
    assert "host" not in by_interface["scheduler_options"]
    by_host = get_engine(base("slurm", scheduler_options={"host": "10.1.2.3"}), tmp_path)
    assert by_host.cluster_kwargs["scheduler_options"]["host"] == "10.1.2.3"


# --- job scripts ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", BATCH)
def test_job_script_for_every_system(kind, tmp_path):
    script = job_script(base(kind, worker_resources={"GPU": 1, "FPGA": 2}), tmp_path / "ep")
    assert DIRECTIVE[kind] in script
    assert "distributed.cli.dask_worker" in script
    assert "--resources GPU=1,FPGA=2" in script
    assert "--memory-limit" in script
    if kind != "htcondor":
        assert "fedcompute-ep" in script  # job name from the endpoint's folder
        assert "--lifetime" in script and "--lifetime-stagger" in script
    if kind != "oar":  # dask-jobqueue's OAR script does not name a log directory
        assert str(tmp_path / "ep" / "jobs") in script  # job logs in the endpoint's folder


@pytest.mark.parametrize("kind", BATCH)
def test_job_script_passes_worker_settings_before_the_users_prologue(kind, tmp_path):
    script = job_script(base(kind, job_script_prologue=["module load python"]), tmp_path)
    assert "export DASK_DISTRIBUTED__WORKER__DAEMON=False" in script
    assert script.index("DASK_DISTRIBUTED__WORKER__DAEMON") < script.index("module load python")


@pytest.mark.parametrize("kind", BATCH)
def test_worker_replaces_the_job_shell(kind, tmp_path):
    # exec: scancel/qdel/walltime signals reach the worker, which stays in the job's processes
    assert "exec /opt/venv/bin/python -m distributed.cli.dask_worker" in job_script(
        base(kind, python="/opt/venv/bin/python"), tmp_path)
    assert re.search(r"exec \S*python\S* -m distributed.cli.dask_worker",
                     job_script(base(kind), tmp_path))


def test_slurm_job_script_directives(tmp_path):
    script = job_script(base("slurm", queue="debug", account="proj", walltime="02:00:00",
                             job_extra_directives=["--gres=gpu:1"],
                             job_script_prologue=["module load python"]), tmp_path)
    for line in ("#SBATCH -p debug", "#SBATCH -A proj", "#SBATCH -t 02:00:00",
                 "#SBATCH --gres=gpu:1", "#SBATCH --cpus-per-task=2", "module load python"):
        assert line in script


def test_engine_job_script_uses_a_placeholder_address_before_start(tmp_path):
    assert "tcp://<scheduler-address>:<port>" in get_engine(base("pbs"), tmp_path).job_script()


# --- walltime and worker lifetime ----------------------------------------------------------

@pytest.mark.parametrize(("value", "unit", "colons", "seconds"), [
    ("01:00:00", 1, "hms", 3600), ("10:30", 1, "hms", 630), (90, 1, "hms", 90),
    (30, 60, "hms", 1800), ("30", 60, "hms", 1800), ("1-12", 60, "hms", 129600),
    ("2-00:30:00", 60, "hms", 174600), ("01:30", 60, "hm", 5400), ("45", 60, "hm", 2700),
    ("90s", 1, "hms", 90), ("2h", 1, "hms", 7200),
])
def test_parse_duration(value, unit, colons, seconds):
    assert parse_duration(value, unit, colons) == seconds


@pytest.mark.parametrize("bad", ["soon", "", None, True, 0, -5, "1:2:3:4"])
def test_parse_duration_refuses(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def lifetime_of(kind: str, **options) -> tuple[float, float] | None:
    args = engine_class(kind).lifetime_args(base(kind, **options))
    if not args:
        return None
    values = dict(zip(args[::2], args[1::2], strict=True))
    return (parse_duration(values["--lifetime"]), parse_duration(values["--lifetime-stagger"]))


@pytest.mark.parametrize(("kind", "walltime", "seconds"), [
    ("slurm", "01:00:00", 3600), ("slurm", 30, 1800), ("pbs", "00:10:00", 600),
    ("sge", "00:00:45", 45), ("lsf", "02:00", 7200), ("oar", "12:00:00", 43200),
])
def test_workers_retire_before_the_walltime(kind, walltime, seconds):
    lifetime, stagger = lifetime_of(kind, walltime=walltime)
    assert stagger >= 1
    assert lifetime + stagger <= seconds - 5  # the last worker leaves before the job is killed
    assert lifetime - stagger >= 0.7 * seconds - 300  # and not much earlier than needed


def test_lifetime_settings():
    assert lifetime_of("slurm") is not None  # dask-jobqueue's default walltime, 00:30:00
    assert lifetime_of("slurm", lifetime=False) is None
    assert lifetime_of("slurm", walltime="00:00:10") is None  # too short to bother
    assert lifetime_of("slurm", lifetime="20m") == (1200, 60)
    assert lifetime_of("slurm", worker_extra_args=["--lifetime", "5m"]) is None  # user's own
    assert lifetime_of("htcondor") is None  # no walltime option in HTCondor


# --- resources -----------------------------------------------------------------------------

def test_dask_resources():
    assert dask_resources(None) == {"resources": None, "walltime": None, "options": None}
    assert dask_resources({"GPU": 1, "MEMORY": 4e9, "walltime": "00:10:00"}) == {
        "resources": {"GPU": 1, "MEMORY": 4e9}, "walltime": 600.0, "options": None}
    assert dask_resources({"num_nodes": 2, "ranks_per_node": 4, "walltime": 30}) == {
        "resources": None, "walltime": 30.0, "options": {"num_nodes": 2, "ranks_per_node": 4}}
    # a key the endpoint does not know as a resource is an option for its engine
    assert dask_resources({"queue": "debug"})["options"] == {"queue": "debug"}
    for bad in ({"GPU": 0}, {"GPU": "1"}, {"GPU": -1.5}, {"bad name": 1},
                {"walltime": "never"}):
        with pytest.raises(ValueError):
            dask_resources(bad)
    for bad in ({"GPU": "one"}, {"GPU": True}):  # amounts of a resource the workers advertise
        with pytest.raises(ValueError):
            dask_resources(bad, resource_names={"GPU"})


# --- job states ----------------------------------------------------------------------------

def test_parse_squeue():
    out = "101 PENDING\n102 RUNNING\n103 COMPLETING\n104 CANCELLED\n999 RUNNING\n"
    assert parse_squeue(out, ["101", "102", "103", "104", "105"]) == {
        "101": "pending", "102": "running", "103": "ending", "104": "gone", "105": "gone"}


def test_parse_qstat():
    out = """job-ID  prior   name       user         state submit/start at     queue                          slots ja-task-ID
-----------------------------------------------------------------------------------------------------------------
      7 0.55500 fedcompute root         r     11/21/2026 23:55:01 all.q@localhost                    1
      8 0.55500 fedcompute root         qw    11/21/2026 23:55:02                                    1
      9 0.55500 fedcompute root         dr    11/21/2026 23:55:02 all.q@localhost                    1
     10 0.55500 fedcompute root         Eqw   11/21/2026 23:55:02                                    1
"""
    assert parse_qstat(out, ["7", "8", "9", "10", "11"]) == {
        "7": "running", "8": "pending", "9": "ending", "10": "gone", "11": "gone"}


def test_outstanding_tasks_hint(tmp_path):
    from types import SimpleNamespace

    engine = get_engine(base("slurm", cores=4, processes=2, max_jobs=8), tmp_path)
    assert engine.hint_workers() == 0  # not started
    engine.cluster = SimpleNamespace(_dummy_job=SimpleNamespace(worker_process_threads=2,
                                                                worker_processes=2))
    for outstanding, workers in ((0, 0), (1, 2), (4, 2), (9, 5), (1000, 500)):
        engine.scale_for(outstanding)
        assert engine.hint_workers() == workers  # Adaptive caps it at max_jobs' workers
    engine.parallelism = 0
    engine.scale_for(1000)
    assert engine.hint_workers() == 2  # one job while tasks are open
    for bad in (-0.1, 1.5, "1", True):
        with pytest.raises(ValueError, match="parallelism"):
            get_engine(base("slurm", parallelism=bad), tmp_path)


def test_status_before_start(tmp_path):
    status = get_engine(base("slurm", max_jobs=4), tmp_path).status()
    assert status["jobs_pending"] == status["jobs_running"] == status["workers"] == 0
    assert status["max_jobs"] == 4 and status["engine"] == "slurm"


# --- templates and the CLI -----------------------------------------------------------------

@pytest.mark.parametrize("kind", ["local", *BATCH])
def test_template_is_commented_and_valid(kind, tmp_path):
    text = (TEMPLATES / f"{kind}.yaml").read_text()
    assert text.count("#") > 5
    config = EndpointConfig.model_validate(yaml.safe_load(text))
    assert config.engine["type"] == kind
    engine = get_engine(config.engine, tmp_path)
    if kind != "local":
        assert engine.max_jobs >= 1 and engine.min_jobs == 0
        assert DIRECTIVE[kind] in engine.job_script()


@pytest.mark.parametrize("kind", BATCH)
def test_cli_configure_and_job_script(kind, tmp_path, monkeypatch):
    monkeypatch.setenv("FEDCOMPUTE_HOME", str(tmp_path))
    runner = CliRunner()
    result = runner.invoke(endpoint_cli, ["configure", "hpc", "--engine", kind])
    assert result.exit_code == 0, result.output
    config = tmp_path / "endpoints" / "hpc" / "config.yaml"
    assert "# " in config.read_text()
    result = runner.invoke(endpoint_cli, ["job-script", "hpc"])
    assert result.exit_code == 0, result.output
    assert DIRECTIVE[kind] in result.output and "dask_worker" in result.output


def test_cli_job_script_names_a_bad_option(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDCOMPUTE_HOME", str(tmp_path))
    runner = CliRunner()
    assert runner.invoke(endpoint_cli, ["configure", "hpc", "--engine", "slurm"]).exit_code == 0
    config = tmp_path / "endpoints" / "hpc" / "config.yaml"
    config.write_text(config.read_text().replace("  cores: 1", "  core: 1"))
    result = runner.invoke(endpoint_cli, ["job-script", "hpc"])
    assert result.exit_code != 0
    assert "unknown option 'core'" in str(result.exception or result.output)
