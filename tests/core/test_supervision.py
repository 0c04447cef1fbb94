"""Processes die with their supervisor, even on SIGKILL, and a second copy on the same folder is
refused with the running PID: `fedcompute service start`, `fedcompute dev` and
`fedcompute endpoint start` as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from fedcompute import Executor
from fedcompute.testing import LocalStack

pytestmark = [pytest.mark.timeout(600)]


def _cli(*args: str, env: dict, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fedcompute.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kwargs)


def _wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def _alive(procs: list[psutil.Process]) -> list[str]:
    out = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    return out


def _kill_and_check(pid: int, expected_at_least: int) -> None:
    """SIGKILL ``pid``: none of its descendants may be alive 10 s later."""
    kids = _descendants(pid)
    assert len(kids) >= expected_at_least, [k.cmdline() for k in kids]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(kids) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _alive(kids)
    for proc in kids:  # do not leave them to the next test if the assertion fails
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    assert not left, f"still alive 10 s after SIGKILL of {pid}: {left}"


def test_service_children_die_with_it_and_a_second_start_is_refused(tmp_path):
    env = {**os.environ, "FEDCOMPUTE_HOME": str(tmp_path)}
    env.pop("FEDCOMPUTE_REDIS_URL", None)
    service = _cli("service", "start", "--port", "0", env=env)
    first = json.loads(service.stdout.readline())
    # gunicorn master + its worker, the RQ worker, the embedded Valkey
    _wait_for(lambda: len(_descendants(service.pid)) >= 4, 60, "the service's processes")

    second = _cli("service", "start", "--port", "0", env=env)
    _, err = second.communicate(timeout=60)
    assert second.returncode != 0
    assert "already running" in err and f"pid {service.pid}" in err, err

    _kill_and_check(service.pid, 4)
    service.wait()

    again = _cli("service", "start", "--port", "0", env=env)
    try:
        url = json.loads(again.stdout.readline())["url"]
        assert url.startswith("http://127.0.0.1:") and url != ""
        assert first["pid"] != again.pid
    finally:
        again.send_signal(signal.SIGTERM)
        again.wait(60)


def test_dev_stack_dies_with_dev_and_a_second_dev_is_refused(tmp_path):
    env = {**os.environ, "FEDCOMPUTE_HOME": str(tmp_path)}
    env.pop("FEDCOMPUTE_REDIS_URL", None)
    dev = _cli("dev", "--workers", "1", env=env)
    _wait_for(lambda: (tmp_path / "dev" / "dev.json").exists(), 180, "the dev stack")
    info = json.loads((tmp_path / "dev" / "dev.json").read_text())

    second = _cli("dev", "--workers", "1", env=env)
    _, err = second.communicate(timeout=60)
    assert second.returncode != 0 and "already running" in err and str(dev.pid) in err, err

    # API (master + worker), RQ worker, Valkey, endpoint agent, its Dask worker(s)
    _kill_and_check(dev.pid, 6)
    dev.wait()
    assert info["endpoint_id"]


def test_endpoint_daemon_dies_whole_restarts_and_loses_no_task(tmp_path):
    stack = LocalStack(tmp_path, workers=2)
    stack.start_service()
    stack.token = stack.create_user("alice")
    try:
        stack.configure_endpoint("ep")
        started = subprocess.run([sys.executable, "-m", "fedcompute.cli", "endpoint", "start",
                                  "ep"], env=stack.env, capture_output=True, text=True,
                                 timeout=180)
        assert started.returncode == 0, started.stderr
        ready = json.loads((tmp_path / "endpoints" / "ep" / "endpoint.ready").read_text())
        endpoint_id, pid = ready["endpoint_id"], ready["pid"]

        again = subprocess.run([sys.executable, "-m", "fedcompute.cli", "endpoint", "start",
                                "ep"], env=stack.env, capture_output=True, text=True,
                               timeout=60)
        assert again.returncode != 0 and f"pid {pid}" in again.stderr, again.stderr

        with Executor(endpoint_id, client=stack.client()) as ex:
            futures = [ex.submit(time.sleep, 0.05) for _ in range(100)]
            _wait_for(lambda: sum(f.done() for f in futures) >= 10, 120, "some results")
            _kill_and_check(pid, 2)  # the agent and its 2 Dask worker processes
            restarted = subprocess.run([sys.executable, "-m", "fedcompute.cli", "endpoint",
                                        "start", "ep"], env=stack.env, capture_output=True,
                                       text=True, timeout=180)
            assert restarted.returncode == 0, restarted.stderr
            assert all(f.result(timeout=180) is None for f in futures)
    finally:
        subprocess.run([sys.executable, "-m", "fedcompute.cli", "endpoint", "stop", "ep"],
                       env=stack.env, capture_output=True, timeout=120)
        stack.stop_service()


def test_a_lock_names_its_holder_and_frees_on_exit(tmp_path):
    from fedcompute.process import AlreadyRunning, PidLock

    path = Path(tmp_path) / "x.lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from fedcompute.process import PidLock; "
        f"PidLock({str(path)!r}, 'x').acquire(); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        lock = PidLock(path, "thing")
        assert lock.held_by() == holder.pid
        with pytest.raises(AlreadyRunning, match=f"thing is already running \\(pid {holder.pid}"):
            lock.acquire()
    finally:
        holder.kill()
        holder.wait()
    with PidLock(path, "thing") as lock:  # the flock went with the process: never stale
        assert lock.held_by() == os.getpid()
    assert PidLock(path, "thing").held_by() is None


def test_a_burst_of_stop_signals_stops_once_without_deadlock(tmp_path):
    """The stop runs on a thread, once: signals landing while it runs (a supervisor's SIGTERM
    after the parent-death one) cannot deadlock the handler on the lock the stop holds."""
    import signal
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "stopper.py"
    script.write_text(textwrap.dedent("""
        import threading, time
        from fedcompute.process import on_stop_signals
        stop, calls = threading.Event(), []
        def on_stop():
            calls.append(1)
            stop.set()
        on_stop_signals(on_stop)
        print("ready", flush=True)
        while not stop.wait(0.0001):
            stop.is_set()  # keep the main thread inside the event's lock as often as possible
        time.sleep(0.2)
        print("stopped", len(calls), flush=True)
    """))
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        for _ in range(50):
            proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert out.strip() == "stopped 1"
