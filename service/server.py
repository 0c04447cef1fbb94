"""Runs the whole service: embedded Redis (unless one is given), gunicorn, the RQ worker and the
maintenance ticker; restarts a child that dies; stops everything on SIGTERM/SIGINT."""

from __future__ import annotations

import datetime
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from fedcompute import process
from fedcompute.config import home
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job

from .embedded import EmbeddedRedis, free_port, redis_password_file
from .jobs import maintenance
from .settings import Settings
from .store.connection import connect
from .worker import QUEUE

log = logging.getLogger(__name__)


def default_data_dir() -> Path:
    return home() / "service"


def state_path(data_dir: Path) -> Path:
    return Path(data_dir) / "service.json"


def running_service(data_dir: Path) -> dict | None:
    """The state file of a live service in ``data_dir``, if any."""
    path = state_path(data_dir)
    if not path.exists():
        return None
    state = json.loads(path.read_text())
    try:
        os.kill(state["pid"], 0)
    except (OSError, KeyError):
        return None
    return state


def _finished_or_abandoned(job: Job, abandoned_after: float) -> bool:
    try:
        job.refresh()
    except NoSuchJobError:  # finished and expired
        return True
    if job.get_status(refresh=False) in ("finished", "failed", "stopped", "canceled", None):
        return True
    # Queued or started: a worker killed mid-run can leave it in either state.
    since = job.started_at or job.enqueued_at
    if since is None:
        return False
    since = since if since.tzinfo else since.replace(tzinfo=datetime.UTC)
    return (datetime.datetime.now(datetime.UTC) - since).total_seconds() > abandoned_after


def _raise_file_limit() -> None:
    """Each idle endpoint holds a connection: let the API (which inherits it) use as many
    descriptors as the system allows this process."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the file descriptor limit: %s", exc)


class Service:
    """The service's processes, supervised."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8000, redis_url: str | None = None,
                 data_dir: Path | None = None, workers: int = 1,
                 certfile: str | None = None, keyfile: str | None = None,
                 settings: Settings | None = None):
        self.host = host
        #: A port chosen here may be taken before gunicorn binds it: then start picks another.
        self._chose_port = not port
        self.port = port or free_port()
        self.data_dir = Path(data_dir or default_data_dir())
        self.settings = settings or Settings.from_env()
        self.redis_url = redis_url or self.settings.redis_url or None
        self.workers = workers
        self.certfile, self.keyfile = certfile, keyfile
        self.embedded: EmbeddedRedis | None = None
        self.children: dict[str, subprocess.Popen] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        #: One service per data folder: a second one would run a second Valkey on the same
        #: append-only file.
        self.lock = process.PidLock(self.data_dir / "service.lock",
                                    f"a fedcompute service on {self.data_dir}")

    @property
    def url(self) -> str:
        scheme = "https" if self.certfile else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["FEDCOMPUTE_REDIS_URL"] = self.redis_url or ""
        return env

    def _spawn(self, name: str) -> subprocess.Popen:
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        if name == "api":
            # Worker class, connections and timeouts: gunicorn_conf.
            args = [sys.executable, "-m", "gunicorn", "--bind", f"{self.host}:{self.port}",
                    "--workers", str(self.workers), "--timeout", "120",
                    "--log-level", "warning", "--config", "python:fedcompute.service.gunicorn_conf",
                    "fedcompute.service.wsgi:app"]
            if self.certfile:
                args += ["--certfile", self.certfile, "--keyfile", self.keyfile or ""]
        else:
            args = [sys.executable, "-m", "fedcompute.service.worker"]
        out = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        proc = process.spawn(args, env=self._env(), stdout=out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL)
        out.close()
        self.children[name] = proc
        return proc

    def start(self, wait: float = 60.0) -> Service:
        """Start everything; :class:`fedcompute.process.AlreadyRunning` if a service already
        runs on this data folder."""
        self.lock.acquire()
        _raise_file_limit()
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            if not self.redis_url:
                self.embedded = EmbeddedRedis(self.data_dir / "redis", avoid_port=self.port,
                                              password=redis_password_file(self.data_dir)).start()
                self.redis_url = self.embedded.url
            self._start_api(wait)
            self._spawn("worker")
        except BaseException:
            self.stop()
            raise
        path = state_path(self.data_dir)
        path.write_text(json.dumps({"pid": os.getpid(), "url": self.url,
                                    "redis_url": self.redis_url}))
        path.chmod(0o600)
        for target in (self._supervise, self._tick):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _start_api(self, wait: float) -> None:
        log_file = self.data_dir / "logs" / "api.log"
        for attempt in range(3):
            log_start = log_file.stat().st_size if log_file.exists() else 0
            self._spawn("api")
            try:
                self._wait_ready(wait)
                return
            except RuntimeError as exc:
                with open(log_file, "rb") as f:
                    f.seek(log_start)
                    tail = f.read()[-3000:].decode(errors="replace")
                if not (self._chose_port and attempt < 2 and "Address already in use" in tail):
                    raise RuntimeError(f"{exc}; the end of its log:\n{tail}") from None
                log.warning("port %d was taken before the API bound it; trying another", self.port)
                self.port = free_port(avoid=self.embedded.port if self.embedded else 0)

    def _wait_ready(self, wait: float) -> None:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.children["api"].poll() is not None:
                raise RuntimeError(f"the API server exited with {self.children['api'].returncode}")
            try:
                if httpx.get(f"{self.url}/v1/version", timeout=2, verify=False).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the API server did not answer within {wait}s")

    def _supervise(self) -> None:
        while not self._stop.wait(1.0):
            embedded = self.embedded
            if embedded and embedded.process and embedded.process.poll() is not None \
                    and not self._stop.is_set():
                # Same port, folder and password: the API and the worker reconnect by
                # themselves, and the append-only file brings back every acknowledged write.
                log.warning("embedded Redis exited with %s; restarting it",
                            embedded.process.returncode)
                try:
                    embedded.start()
                except Exception as exc:  # noqa: BLE001 - try again at the next round
                    log.error("could not restart the embedded Redis: %s", exc)
            for name, proc in list(self.children.items()):
                if proc.poll() is not None and not self._stop.is_set():
                    log.warning("%s exited with %s; restarting", name, proc.returncode)
                    self._spawn(name)

    def _tick(self) -> None:
        queue = Queue(QUEUE, connection=connect(self.redis_url))
        job = None
        # A maintenance run takes well under a second. One not finished after this long was
        # abandoned by an RQ worker that died mid-run; RQ itself notices only minutes later,
        # and waiting for it would leave silent endpoints' tasks unclaimed all that time.
        # (Two runs at once are harmless: every step is an idempotent script.)
        abandoned_after = max(20.0, 10 * self.settings.maintenance_interval)
        while not self._stop.wait(self.settings.maintenance_interval):
            try:
                if job is None or _finished_or_abandoned(job, abandoned_after):
                    job = queue.enqueue(maintenance, self.redis_url, job_timeout=300,
                                        result_ttl=60, failure_ttl=3600)
            except Exception as exc:  # noqa: BLE001 - Redis restarting: try next tick
                log.warning("could not enqueue maintenance: %s", exc)
                job = None

    def stop(self) -> None:
        self._stop.set()
        process.stop_all(list(self.children.values()))
        if self.embedded:
            self.embedded.stop()
        state_path(self.data_dir).unlink(missing_ok=True)
        self.lock.release()

    def serve_forever(self) -> None:
        """Block until SIGTERM or SIGINT, then stop everything."""
        stop = threading.Event()
        process.on_stop_signals(stop.set)
        try:
            while not stop.wait(1.0):
                pass
        finally:
            self.stop()
