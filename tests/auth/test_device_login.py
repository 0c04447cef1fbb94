"""``fedcompute login --oidc`` end to end: the CLI runs the device authorization flow against
the provider the service names, the test approves the code on the provider's verification page
as the user would, the login lands in the credentials file (0600, with its refresh token), the
SDK uses it (refreshing by itself), an endpoint started by that user gets its own credential
(and rotates it), and ``fedcompute logout`` revokes the tokens at the provider."""

from __future__ import annotations

import json
import stat
import subprocess
import sys

import httpx
import pytest
from fedcompute import Client, Executor, oauth
from fedcompute.errors import AuthError

from tests.auth.conftest import cli_env
from tests.auth.oidc import CLILogin
from tests.reliability.helpers import wait_for

pytestmark = pytest.mark.timeout(600)


def _cli(env: dict, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedcompute.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def triple(x):
    return 3 * x


def test_device_login_whoami_sdk_endpoint_and_logout(auth_stack, idp, tmp_path, monkeypatch):
    home = tmp_path / "carol"
    env = cli_env(auth_stack, home)
    login = CLILogin(env, auth_stack.service_url, "--issuer", idp.issuer)
    code = login.code()
    assert login.verification.startswith(f"{idp.url}/device?user_code=")
    assert idp.approve(code, "carol", ["lab", "physics"])["approved"] is True
    status, out, err = login.wait()
    assert status == 0, err
    assert f"logged in to {auth_stack.service_url} as carol through {idp.issuer}" in out

    path = home / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    saved = json.loads(path.read_text())
    assert saved["service_url"] == auth_stack.service_url and "token" not in saved
    assert saved["oauth"]["refresh_token"] and saved["oauth"]["issuer"] == idp.issuer

    done = _cli(env, "whoami")
    assert done.returncode == 0, done.stderr
    who = json.loads(done.stdout)
    assert (who["name"], who["via"], who["groups"]) == ("carol", "oidc", ["lab", "physics"])
    assert who["login"]["refreshable"] is True
    assert saved["oauth"]["refresh_token"] not in done.stdout  # tokens are never shown

    # The SDK in this process finds the login; alice's endpoint is shared with group "lab".
    for name in ("FEDCOMPUTE_TOKEN", "FEDCOMPUTE_SERVICE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FEDCOMPUTE_HOME", str(home))
    with Executor(auth_stack.endpoint_id, client=Client(auth_stack.service_url)) as ex:
        assert ex.submit(triple, 14).result(timeout=120) == 42

    # An endpoint carol starts gets its own credential, registered through her login.
    done = _cli(env, "endpoint", "configure", "carols", "--service-url",
                auth_stack.service_url, "--workers", "1")
    assert done.returncode == 0, done.stderr
    try:
        done = _cli(env, "endpoint", "start", "carols")
        assert done.returncode == 0, done.stderr
        cred_path = home / "endpoints" / "carols" / "credential.json"
        first = json.loads(cred_path.read_text())
        assert first["credential"].startswith("fce_")
        carol = Client(auth_stack.service_url)
        assert carol.get_endpoint_metadata(first["endpoint_id"])["owner"] == "carol"
        wait_for(lambda: carol.get_endpoint_status(first["endpoint_id"])["status"] == "online",
                 60, "carol's endpoint online")
        # Rotation: same id, a new credential; the old one is refused at once; the endpoint
        # was restarted with the new one and runs tasks.
        done = _cli(env, "endpoint", "rotate-credential", "carols")
        assert done.returncode == 0, done.stderr
        assert "has a new credential" in done.stdout and "started" in done.stdout
        second = json.loads(cred_path.read_text())
        assert second["endpoint_id"] == first["endpoint_id"]
        assert second["credential"] != first["credential"]
        old = httpx.post(f"{auth_stack.service_url}/v1/agent/heartbeat", timeout=30,
                         headers={"Authorization": f"Bearer {first['credential']}"},
                         json={"session": "x", "status": {}})
        assert old.status_code == 401
        with Executor(first["endpoint_id"], client=carol) as ex:
            assert ex.submit(triple, 5).result(timeout=180) == 15
        done = _cli(env, "endpoint", "rotate-credential", "carols", "--no-restart")
        assert done.returncode == 0 and "it is stopped" in done.stdout, done.stderr
    finally:
        _cli(env, "endpoint", "stop", "carols")

    # Logout revokes at the provider (RFC 7009) and forgets the login.
    session = oauth.OAuthSession.from_dict(json.loads(path.read_text())["oauth"])
    revoked_before = idp.stats()["revoke"]
    done = _cli(env, "logout")
    assert done.returncode == 0, done.stderr
    assert "revoked the tokens" in done.stderr and not path.exists()
    assert idp.stats()["revoke"] - revoked_before == 2  # refresh and access token
    with pytest.raises(AuthError, match="expired or was revoked"):
        oauth.refresh(session)


def test_a_denied_login_fails_clearly(auth_stack, idp, tmp_path):
    env = cli_env(auth_stack, tmp_path / "dan")
    login = CLILogin(env, auth_stack.service_url, "--issuer", idp.issuer)
    idp.approve(login.code(), "dan", deny=True)
    status, _, err = login.wait()
    assert status == 1 and "sign-in was denied" in err
    assert not (tmp_path / "dan" / "credentials.json").exists()


def test_login_needs_an_issuer_choice_when_there_are_several(auth_stack, tmp_path):
    done = _cli(cli_env(auth_stack, tmp_path / "x"), "login", auth_stack.service_url, "--oidc")
    assert done.returncode == 1 and "accepts several issuers: pass --issuer" in done.stderr


def test_a_static_token_login_file_still_works(auth_stack, tmp_path):
    env = cli_env(auth_stack, tmp_path / "static")
    done = _cli(env, "login", auth_stack.service_url, "--token", auth_stack.token)
    assert done.returncode == 0, done.stderr
    saved = json.loads((tmp_path / "static" / "credentials.json").read_text())
    assert saved == {"service_url": auth_stack.service_url, "token": auth_stack.token}
    done = _cli(env, "whoami")
    assert json.loads(done.stdout)["via"] == "token"
    assert _cli(env, "logout").returncode == 0
    assert not (tmp_path / "static" / "credentials.json").exists()
