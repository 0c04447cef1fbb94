"""``fedcompute dev``: the whole stack on this machine, for trying things out and for demos."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time

import click
import yaml
from fedcompute import process
from fedcompute.config import home, save_credentials

from .auth import issue_user_token
from .server import Service
from .settings import Settings
from .store import Store


def _start_endpoint(env: dict[str, str], name: str, service_url: str, workers: int | None,
                    timeout: float = 120.0) -> tuple[subprocess.Popen, str]:
    directory = home() / "endpoints" / name
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "config.yaml"
    data = yaml.safe_load(config.read_text()) if config.exists() else {}
    data = data or {}
    data["service_url"] = service_url
    data.setdefault("engine", {"type": "local"})
    if workers:
        data["engine"]["workers"] = workers
    config.write_text("# written by `fedcompute dev`\n" + yaml.safe_dump(data))
    (directory / "endpoint.ready").unlink(missing_ok=True)
    log = open(directory / "endpoint.log", "ab")  # noqa: SIM115 - handed to the child
    # SIGKILL if `dev` dies: the whole stack goes with it, so there is nothing to drain for.
    proc = process.spawn([sys.executable, "-m", "fedcompute.endpoint.cli", "start", name,
                          "--foreground"], death_signal=signal.SIGKILL, env=env, stdout=log,
                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    deadline = time.monotonic() + timeout
    ready = directory / "endpoint.ready"
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise click.ClickException(f"endpoint {name} failed to start; see "
                                       f"{directory / 'endpoint.log'}")
        time.sleep(0.1)
    return proc, json.loads(ready.read_text())["endpoint_id"]


@click.command()
@click.option("--port", default=0, help="service port (default: a free one)")
@click.option("--workers", type=int, default=None, help="Dask worker processes at the endpoint")
@click.option("--run", "run_cmd", default=None,
              help="run this command with the stack up, then stop everything")
@click.option("--user", "user_name", default="dev", show_default=True)
def dev(port: int, workers: int | None, run_cmd: str | None, user_name: str) -> None:
    """Start embedded Redis, the service, its RQ worker and a local endpoint named `local`.

    Prints the URL, a token and the endpoint id, and saves them so that `Client()` and
    `Executor(endpoint_id=...)` work from another shell. Ctrl-C stops everything.
    """
    try:
        svc = Service(port=port, data_dir=home() / "dev" / "service").start()
    except process.AlreadyRunning as exc:
        raise click.ClickException(f"`fedcompute dev` is already running here: {exc}") from None
    endpoint_proc = None
    try:
        store = Store(svc.redis_url, Settings.from_env(redis_url=svc.redis_url))
        store.create_user(user_name)
        store.revoke_tokens("user", user_name)  # one live dev token at a time
        token = issue_user_token(store, user_name, "fedcompute dev")
        store.redis.close()
        save_credentials(svc.url, token)
        env = {**os.environ, "FEDCOMPUTE_SERVICE_URL": svc.url, "FEDCOMPUTE_TOKEN": token}
        # The endpoint registers afresh against this service run.
        (home() / "endpoints" / "local" / "credential.json").unlink(missing_ok=True)
        endpoint_proc, endpoint_id = _start_endpoint(env, "local", svc.url, workers)
        env["FEDCOMPUTE_ENDPOINT_ID"] = endpoint_id
        info = {"service_url": svc.url, "token": token, "endpoint_id": endpoint_id}
        (home() / "dev" / "dev.json").write_text(json.dumps(info, indent=2))
        (home() / "dev" / "dev.json").chmod(0o600)
        click.echo(f"fedcompute dev stack is up\n  service:   {svc.url}\n  token:     {token}\n"
                   f"  endpoint:  local = {endpoint_id}\n  saved in:  {home()}\n"
                   f"  try:       python -c \"from fedcompute import Executor; "
                   f"print(Executor('{endpoint_id}').submit(sum, [1, 2]).result())\"", err=True)
        if run_cmd:
            code = subprocess.call(shlex.split(run_cmd), env=env)
            if code:
                raise SystemExit(code)
            return
        stop = threading.Event()
        process.on_stop_signals(stop.set)
        click.echo("press Ctrl-C to stop", err=True)
        while not stop.wait(1.0):
            if endpoint_proc.poll() is not None:
                click.echo("the endpoint exited; restarting it", err=True)
                endpoint_proc, _ = _start_endpoint(env, "local", svc.url, workers)
    finally:
        if endpoint_proc is not None:
            process.stop(endpoint_proc, 60)
        svc.stop()
        click.echo("stopped", err=True)
