"""Run a real fedcompute stack from Python (for tests, benchmarks and notebooks): the service
(gunicorn + RQ worker + embedded Valkey) and endpoints (agent + Dask LocalCluster), each a
subprocess on 127.0.0.1, stopped by PID. Drives only the public `fedcompute` CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from fedcompute import Client


class LocalStack:
    """Start/stop/kill the parts of a stack rooted at ``home`` (its FEDCOMPUTE_HOME)."""

    def __init__(self, home: Path, workers: int = 2, env: dict | None = None):
        self.home = Path(home)
        self.workers = workers
        self.extra_env = env or {}
        self.service: subprocess.Popen | None = None
        self.service_url = ""
        self.port = 0
        self.token = ""
        self.endpoints: dict[str, subprocess.Popen] = {}
        self.endpoint_ids: dict[str, str] = {}

    @property
    def env(self) -> dict[str, str]:
        env = {**os.environ, "FEDCOMPUTE_HOME": str(self.home), **self.extra_env}
        env.pop("FEDCOMPUTE_REDIS_URL", None)
        if self.service_url:
            env["FEDCOMPUTE_SERVICE_URL"] = self.service_url
        if self.token:
            env["FEDCOMPUTE_TOKEN"] = self.token
        return env

    def cli(self, *args: str, env: dict | None = None, check: bool = True) -> str:
        done = subprocess.run([sys.executable, "-m", "fedcompute.cli", *args],
                              env=env or self.env, capture_output=True, text=True, timeout=120)
        if check and done.returncode:
            raise RuntimeError(f"fedcompute {' '.join(args)} failed:\n{done.stderr}")
        return done.stdout.strip()

    # --- service -------------------------------------------------------------------------

    def start_service(self, timeout: float = 60.0) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.home / "service.out", "ab")  # noqa: SIM115
        self.service = subprocess.Popen(
            [sys.executable, "-m", "fedcompute.cli", "service", "start",
             "--port", str(self.port)],
            env=self.env, stdout=subprocess.PIPE, stderr=log, start_new_session=True)
        log.close()
        line = self.service.stdout.readline()
        if not line:
            raise RuntimeError(f"service did not start; see {self.home / 'service.out'}")
        self.service_url = json.loads(line)["url"]
        self.port = int(self.service_url.rsplit(":", 1)[1])

    def stop_service(self) -> None:
        if self.service and self.service.poll() is None:
            self.service.send_signal(signal.SIGTERM)
            try:
                self.service.wait(60)
            except subprocess.TimeoutExpired:
                self.service.kill()
                self.service.wait()

    def service_children(self) -> dict[str, int]:
        """PIDs of the API server (gunicorn master) and the RQ worker."""
        import psutil

        out = {}
        for child in psutil.Process(self.service.pid).children():
            try:
                cmd = " ".join(child.cmdline())
            except psutil.Error:  # exited (or a zombie not yet reaped by the supervisor)
                continue
            if "gunicorn" in cmd:
                out["api"] = child.pid
            elif "fedcompute.service.worker" in cmd or cmd.startswith("rq:worker"):  # RQ retitles
                out["worker"] = child.pid
            elif "valkey" in cmd or "redis" in cmd:
                out["redis"] = child.pid
        return out

    def create_user(self, name: str) -> str:
        return self.cli("user", "create", name)

    def client(self, token: str | None = None) -> Client:
        return Client(self.service_url, token or self.token)

    # --- endpoints -----------------------------------------------------------------------

    def configure_endpoint(self, name: str, **config) -> None:
        directory = self.home / "endpoints" / name
        directory.mkdir(parents=True, exist_ok=True)
        data = {"service_url": self.service_url,
                "engine": {"type": "local", "workers": self.workers}, "drain_timeout": 5}
        data.update(config)
        (directory / "config.yaml").write_text(yaml.safe_dump(data))

    def start_endpoint(self, name: str = "local", timeout: float = 120.0, token: str | None = None,
                       **config) -> str:
        directory = self.home / "endpoints" / name
        if config or not (directory / "config.yaml").exists():
            self.configure_endpoint(name, **config)
        (directory / "endpoint.ready").unlink(missing_ok=True)
        env = self.env
        if token:
            env["FEDCOMPUTE_TOKEN"] = token
        log = open(directory / "endpoint.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedcompute.endpoint.cli", "start", name, "--foreground"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while not (directory / "endpoint.ready").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"endpoint {name} did not start:\n"
                                   f"{(directory / 'endpoint.log').read_text()[-3000:]}")
            time.sleep(0.1)
        self.endpoints[name] = proc
        self.endpoint_ids[name] = json.loads((directory / "endpoint.ready").read_text())[
            "endpoint_id"]
        return self.endpoint_ids[name]

    def stop_endpoint(self, name: str = "local", sig: int = signal.SIGTERM) -> None:
        proc = self.endpoints.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        if sig == signal.SIGKILL:
            import psutil  # SIGKILL leaves Dask workers behind: end the whole process group

            kids = psutil.Process(proc.pid).children(recursive=True)
            proc.kill()
            for kid in kids:
                try:
                    kid.kill()
                except psutil.NoSuchProcess:
                    pass
            proc.wait()
            return
        proc.send_signal(sig)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def endpoint_log(self, name: str = "local") -> str:
        return (self.home / "endpoints" / name / "endpoint.log").read_text()

    # --- whole stack ---------------------------------------------------------------------

    def up(self, user: str = "alice") -> LocalStack:
        self.start_service()
        self.token = self.create_user(user)
        self.endpoint_id = self.start_endpoint("local")
        return self

    def down(self) -> None:
        for name in list(self.endpoints):
            self.stop_endpoint(name)
        self.stop_service()
