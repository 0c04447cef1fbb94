"""The command line, end to end: `fedcompute dev --run` (the demo's engine) and the endpoint
daemon's lifecycle (configure, start, list, restart, stop, delete)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def fedcompute(*args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedcompute.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_dev_runs_a_job_and_stops_everything(tmp_path):
    env = {**os.environ, "FEDCOMPUTE_HOME": str(tmp_path)}
    done = fedcompute("dev", "--workers", "1", "--run",
                      f"{sys.executable} {ROOT / 'examples' / 'quickstart.py'}", env=env)
    assert done.returncode == 0, done.stderr
    assert "1,000 tasks of 10 ms" in done.stdout
    assert "remote exception re-raised locally" in done.stdout
    assert "fedcompute dev stack is up" in done.stderr and "stopped" in done.stderr
    # credentials saved for other shells; nothing left running
    assert (tmp_path / "credentials.json").exists()
    assert not (tmp_path / "dev" / "service" / "service.json").exists()


def test_endpoint_daemon_lifecycle(fed_stack, tmp_path):
    env = {**fed_stack.env}
    out = fedcompute("endpoint", "configure", "daemon-ep", "--workers", "1", "--service-url",
                     fed_stack.service_url, env=env)
    assert out.returncode == 0, out.stderr
    again = fedcompute("endpoint", "configure", "daemon-ep", env=env)
    assert again.returncode != 0 and "exists" in again.stderr
    started = fedcompute("endpoint", "start", "daemon-ep", env=env)
    assert started.returncode == 0, started.stderr
    assert "started" in started.stdout
    listing = fedcompute("endpoint", "list", env=env).stdout
    assert "daemon-ep" in listing and "running" in listing
    endpoint_id = listing.split("daemon-ep")[1].split()[0]
    # ...and what the service sees of it
    line = next(ln for ln in listing.splitlines() if ln.startswith("daemon-ep"))
    assert "online, 1 workers, 0 queued, 0 at the endpoint (0 running)" in line, line

    from fedcompute import Executor

    with Executor(endpoint_id, client=fed_stack.client()) as ex:
        assert ex.submit(pow, 2, 5).result(timeout=120) == 32

    restarted = fedcompute("endpoint", "restart", "daemon-ep", env=env)
    assert restarted.returncode == 0, restarted.stderr
    assert endpoint_id in restarted.stdout  # same id after restart
    stopped = fedcompute("endpoint", "stop", "daemon-ep", env=env)
    assert "stopped" in stopped.stdout
    assert "stopped" in fedcompute("endpoint", "list", env=env).stdout
    deleted = fedcompute("endpoint", "delete", "daemon-ep", "--yes", env=env)
    assert deleted.returncode == 0, deleted.stderr
    assert "daemon-ep" not in fedcompute("endpoint", "list", env=env).stdout


def test_user_commands_and_login(fed_stack, tmp_path):
    token = fed_stack.cli("user", "create", "carol-cli")
    assert token.startswith("fcu_")
    env = {**fed_stack.env, "FEDCOMPUTE_HOME": str(tmp_path), "FEDCOMPUTE_TOKEN": token}
    env.pop("FEDCOMPUTE_SERVICE_URL")
    login = fedcompute("login", fed_stack.service_url, env=env)
    assert login.returncode == 0 and "carol-cli" in login.stdout, login.stderr
    env.pop("FEDCOMPUTE_TOKEN")
    assert '"carol-cli"' in fedcompute("whoami", env=env).stdout
    assert "carol-cli" in fed_stack.cli("user", "list")
    fed_stack.cli("user", "revoke", "carol-cli")
    refused = fedcompute("whoami", env=env)
    assert refused.returncode != 0 and "401" in refused.stderr


def nap(seconds):
    import time

    time.sleep(seconds)
    return seconds


def test_task_show_list_and_cancel(fed_stack):
    import time

    from fedcompute import Executor

    env = {**fed_stack.env}
    ex = Executor(fed_stack.endpoint_id, client=fed_stack.client())
    long, short = ex.submit(nap, 120), ex.submit(nap, 0)
    assert short.result(timeout=120) == 0
    deadline = time.monotonic() + 60
    while long.status() != "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    shown = fedcompute("task", "show", long.task_id, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "state      running" in shown.stdout and "worker     " in shown.stdout
    assert [ln.split()[-1] for ln in shown.stdout.split("timeline")[1].splitlines()[1:4]] == \
        ["received", "waiting-for-endpoint", "leased"]
    group = str(ex.task_group_id)
    listed = fedcompute("task", "list", "--group", group, env=env).stdout.splitlines()
    assert sorted(ln.split("\t")[:2] for ln in listed) == sorted(
        [[long.task_id, "running"], [short.task_id, "success"]])
    pending = fedcompute("task", "list", "--group", group, "--state", "pending", env=env)
    assert pending.stdout.split("\t")[0] == long.task_id
    cancelled = fedcompute("task", "cancel", long.task_id, env=env)
    assert cancelled.stdout.strip() == f"{long.task_id}\tcancelling", cancelled.stderr
    deadline = time.monotonic() + 30
    while "state      cancelled" not in (out := fedcompute("task", "show", long.task_id,
                                                          env=env).stdout):
        assert time.monotonic() < deadline, out
        time.sleep(0.5)
    assert "error      TaskCancelled" in out
    assert "1 cancelled" in fedcompute("task", "cancel", "--group", group, env=env).stdout
    bad = fedcompute("task", "show", "not-a-task", env=env)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    ex.shutdown(wait=False)
