"""``fedcompute endpoint configure|start|stop|restart|list|delete|job-script NAME``."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click
import yaml
from fedcompute.client import Client
from fedcompute.config import load_credentials
from fedcompute.process import AlreadyRunning, PidLock, on_stop_signals, stop_pid

from .config import (
    config_path,
    endpoint_dir,
    endpoints_root,
    load_config,
    load_credential,
    save_credential,
)

TEMPLATES = Path(__file__).parent / "templates"


def _lock(name: str) -> PidLock:
    """Held by the running endpoint for its whole life: one agent per endpoint folder."""
    return PidLock(endpoint_dir(name) / "endpoint.lock", f"endpoint {name}")


def _pid(name: str) -> int | None:
    """The PID of the running endpoint ``name``, if any."""
    return _lock(name).held_by()


def default_config(engine: str, service_url: str | None, workers: int | None) -> str:
    template = TEMPLATES / f"{engine}.yaml"
    if template.exists():
        text = template.read_text()
    else:
        text = f"engine:\n  type: {engine}\n"
    data = yaml.safe_load(text) or {}
    header = "# fedcompute endpoint configuration (see `fedcompute endpoint --help`)\n"
    if service_url:
        text = f"service_url: {service_url}\n" + text
    if workers and engine == "local":
        data.setdefault("engine", {})["workers"] = workers
        text = (f"service_url: {service_url}\n" if service_url else "") + yaml.safe_dump(data)
    return header + text


@click.group()
def endpoint() -> None:
    """Configure and run endpoints (agents that run tasks on a Dask cluster)."""


@endpoint.command()
@click.argument("name")
@click.option("--engine", default="local", show_default=True,
              help="local, slurm, pbs, sge, lsf, htcondor, oar, moab or kubernetes")
@click.option("--service-url", default=None, help="default: the `fedcompute login` service")
@click.option("--workers", type=int, default=None, help="local engine: worker processes")
@click.option("--force", is_flag=True, help="overwrite an existing configuration")
@click.option("--multi-user", is_flag=True,
              help="serve many users, each as their mapped local account (run it as root)")
def configure(name: str, engine: str, service_url: str | None, workers: int | None,
              force: bool, multi_user: bool) -> None:
    """Write a commented configuration for endpoint NAME."""
    from .engines import ENGINES, RETIRED

    if engine in RETIRED:
        raise click.BadParameter(RETIRED[engine], param_hint="--engine")
    if engine not in ENGINES:
        raise click.BadParameter(f"choose one of {', '.join(ENGINES)}", param_hint="--engine")
    path = config_path(name)
    if path.exists() and not force:
        raise click.ClickException(f"{path} exists (use --force to overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    if multi_user:  # config, user config template and schema (endpoint/multiuser/starter.py)
        from .multiuser.starter import write_starter_files

        written = write_starter_files(path.parent, service_url, force)
        load_config(name)
        click.echo("\n".join(f"wrote {p}" for p in written))
        return
    path.write_text(default_config(engine, service_url, workers))
    load_config(name)  # the template must itself be valid
    click.echo(f"wrote {path}")


def register(name: str) -> dict:
    """The endpoint's credential, registering it with the service on first use."""
    config = load_config(name)
    saved = load_credential(name)
    creds = load_credentials(config.service_url)
    if saved and saved.get("service_url") == creds.service_url:
        return saved
    with Client(creds.service_url, creds.token, verify=config.verify_tls) as client:
        reply = client.register_endpoint(name, (saved or {}).get("endpoint_id"),
                                         public=config.public, shared_with=config.shared_with,
                                         shared_with_groups=config.shared_with_groups,
                                         allowed_functions=config.allowed_functions)
    save_credential(name, reply["endpoint_id"], reply["credential"], creds.service_url)
    return load_credential(name) or {}


def run_foreground(name: str) -> None:
    from .agent import Agent

    config = load_config(name)
    cred = register(name)
    directory = endpoint_dir(name)
    lock = _lock(name).acquire()
    agent = Agent(config, cred["endpoint_id"], cred["credential"], cred["service_url"], directory)
    on_stop_signals(agent.stop)

    def ready() -> None:
        # Written atomically: `start` and test harnesses read it as soon as it exists.
        tmp = directory / "endpoint.ready.tmp"
        tmp.write_text(json.dumps({"endpoint_id": cred["endpoint_id"], "pid": os.getpid()}))
        tmp.replace(directory / "endpoint.ready")

    try:
        agent.run(on_ready=ready)
    finally:
        (directory / "endpoint.ready").unlink(missing_ok=True)
        lock.release()


@endpoint.command()
@click.argument("name")
@click.option("--foreground", is_flag=True, help="run in this process (logs to stderr)")
@click.option("--timeout", default=120.0, show_default=True, help="seconds to wait for start")
def start(name: str, foreground: bool, timeout: float) -> None:
    """Start endpoint NAME (registers it with the service on first start)."""
    if _pid(name):
        raise click.ClickException(f"endpoint {name} is already running (pid {_pid(name)})")
    directory = endpoint_dir(name)
    if not config_path(name).exists():
        raise click.ClickException(
            f"endpoint {name!r} is not configured: run `fedcompute endpoint configure {name}`")
    if foreground:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        try:
            run_foreground(name)
        except AlreadyRunning as exc:
            raise click.ClickException(str(exc)) from None
        return
    cred = register(name)
    (directory / "endpoint.ready").unlink(missing_ok=True)
    log = open(directory / "endpoint.log", "ab")  # noqa: SIM115 - handed to the daemon
    proc = subprocess.Popen([sys.executable, "-m", "fedcompute.endpoint.cli", "start", name,
                             "--foreground"], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    log.close()
    deadline = time.monotonic() + timeout
    while not (directory / "endpoint.ready").exists():
        if proc.poll() is not None:
            raise click.ClickException(
                f"endpoint {name} exited with {proc.returncode}; see {directory / 'endpoint.log'}")
        if time.monotonic() > deadline:
            raise click.ClickException(f"endpoint {name} did not start within {timeout}s")
        time.sleep(0.1)
    click.echo(f"endpoint {name} started: id {cred['endpoint_id']}, pid {proc.pid}, "
               f"log {directory / 'endpoint.log'}")


def _stop(name: str, timeout: float) -> bool:
    pid = _pid(name)
    if pid is None:
        return False
    stop_pid(pid, timeout)
    return True


@endpoint.command()
@click.argument("name")
@click.option("--timeout", default=60.0, show_default=True)
def stop(name: str, timeout: float) -> None:
    """Stop endpoint NAME: drain running tasks, hand the rest back to the service."""
    click.echo(f"endpoint {name} stopped" if _stop(name, timeout) else f"{name} is not running")


@endpoint.command()
@click.argument("name")
@click.pass_context
def restart(ctx: click.Context, name: str) -> None:
    """Stop and start endpoint NAME."""
    _stop(name, 60)
    ctx.invoke(start, name=name)


@endpoint.command("list")
@click.option("--local", "local_only", is_flag=True, help="do not ask the service")
def list_endpoints(local_only: bool) -> None:
    """Configured endpoints: id, whether it runs here, and what the service sees (online,
    workers, tasks queued, at the endpoint and running, batch jobs pending/running)."""
    root = endpoints_root()
    client = None
    if not local_only:
        try:
            client = Client()
        except Exception:  # noqa: BLE001 - not logged in: the local view is still useful
            client = None
    for path in sorted(root.glob("*/config.yaml")) if root.exists() else []:
        name = path.parent.name
        cred = load_credential(name) or {}
        endpoint_id = cred.get("endpoint_id")
        state = f"running (pid {_pid(name)})" if _pid(name) else "stopped"
        line = [name, endpoint_id or "(not registered)", state]
        if client is not None and endpoint_id:
            line.append(_service_view(client, endpoint_id))
        click.echo("\t".join(line))


def _service_view(client: Client, endpoint_id: str) -> str:
    """``online, 2 workers, 10 queued, 4 at the endpoint (2 running), jobs 1 pending 1
    running`` as the service has it."""
    try:
        status = client.get_endpoint_status(endpoint_id)
    except Exception as exc:  # noqa: BLE001 - one endpoint the service does not know
        return f"service: {str(exc).splitlines()[0][:80]}"
    details = status.get("details") or {}
    parts = [status["status"], f"{details.get('workers', 0)} workers",
             f"{status['queued']} queued", f"{status['leased']} at the endpoint"]
    if details.get("running") is not None and status["status"] == "online":
        parts[-1] += f" ({details['running']} running)"
    if "jobs_pending" in details:
        parts.append(f"jobs {details['jobs_pending']} pending {details['jobs_running']} running")
    return ", ".join(parts)


@endpoint.command()
@click.argument("name")
@click.option("--yes", is_flag=True, help="do not ask")
def delete(name: str, yes: bool) -> None:
    """Stop endpoint NAME, delete it from the service and remove its folder."""
    if not yes:
        click.confirm(f"delete endpoint {name}?", abort=True)
    _stop(name, 60)
    cred = load_credential(name)
    if cred:
        creds = load_credentials(cred["service_url"])
        with Client(creds.service_url, creds.token) as client:
            client.delete_endpoint(cred["endpoint_id"])
    shutil.rmtree(endpoint_dir(name), ignore_errors=True)
    click.echo(f"deleted endpoint {name}")


@endpoint.command("rotate-credential")
@click.argument("name")
@click.option("--restart/--no-restart", default=True, show_default=True,
              help="restart a running endpoint with the new credential")
@click.pass_context
def rotate_credential(ctx: click.Context, name: str, restart: bool) -> None:
    """Give endpoint NAME a new credential; the old one is refused at once.

    The endpoint keeps its id (it re-registers, with the sharing of its config.yaml). A running
    endpoint is stopped first (it drains with its old credential), then started again with the
    new one; with --no-restart it stays stopped until you start it."""
    cred = load_credential(name)
    if not cred:
        raise click.ClickException(f"endpoint {name} was never registered: start it first")
    config = load_config(name)
    was_running = _stop(name, 60)
    creds = load_credentials(cred["service_url"])
    try:
        with Client(creds.service_url, creds.token, verify=config.verify_tls) as client:
            reply = client.register_endpoint(name, cred["endpoint_id"], public=config.public,
                                             shared_with=config.shared_with,
                                             shared_with_groups=config.shared_with_groups,
                                             allowed_functions=config.allowed_functions)
    except Exception:
        if was_running:  # nothing changed: bring it back as it was
            ctx.invoke(start, name=name, foreground=False, timeout=120.0)
        raise
    save_credential(name, reply["endpoint_id"], reply["credential"], creds.service_url)
    click.echo(f"endpoint {name} ({reply['endpoint_id']}) has a new credential; the old one is "
               "refused from now on")
    if was_running and restart:
        ctx.invoke(start, name=name, foreground=False, timeout=120.0)
    elif was_running:
        click.echo(f"it is stopped: `fedcompute endpoint start {name}` starts it with the new "
                   "credential")


@endpoint.command("job-script")
@click.argument("name")
def job_script(name: str) -> None:
    """Print the batch script the endpoint's engine would submit."""
    from .engines import get_engine

    config = load_config(name)
    engine = get_engine(config.engine, endpoint_dir(name), container=config.container)
    script = getattr(engine, "job_script", None)
    if script is None:
        raise click.ClickException(f"engine {config.engine.get('type', 'local')} submits no jobs")
    click.echo(script())


if __name__ == "__main__":
    endpoint()
