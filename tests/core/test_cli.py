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
