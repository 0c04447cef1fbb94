"""Driving the test OpenID Connect provider (``tests/auth/provider.py``) from tests: start it
as a process, sign users in through the real device flow (the test plays the user approving
the code on the provider's verification page), mint tokens with chosen claims, rotate keys,
and write the service's issuer configuration."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import yaml
from fedcompute import Client, oauth

from tests.auth.provider import AUTOMATION_CLIENT, CLI_CLIENT, SERVICE_CLIENT, SERVICE_SECRET

REPO = Path(__file__).resolve().parents[2]


class Provider:
    """One provider process on 127.0.0.1 (``stop()`` ends it, by PID)."""

    def __init__(self, lifetime: int = 6, opaque: bool = False, audience: str = "fedcompute"):
        self.lifetime = lifetime
        self.opaque = opaque
        args = [sys.executable, "-m", "tests.auth.provider", "--lifetime", str(lifetime),
                "--audience", audience, *(["--opaque"] if opaque else [])]
        self.proc = subprocess.Popen(args, cwd=REPO, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the test OIDC provider did not start ({self.proc.poll()})")
        self.url = json.loads(line)["url"]
        self.http = httpx.Client(base_url=self.url, timeout=30)

    @property
    def issuer(self) -> str:
        return self.url

    @property
    def discovery_url(self) -> str:
        return f"{self.url}/.well-known/openid-configuration"

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    # --- the user's side ---------------------------------------------------------------

    def approve(self, user_code: str, user: str, groups: list[str] | None = None,
                deny: bool = False) -> dict:
        """What the user does in the browser: sign in as ``user`` and approve the code."""
        form = {"user_code": user_code, "username": user,
                "action": "deny" if deny else "approve"}
        if groups is not None:
            form["groups"] = ",".join(groups)
        reply = self.http.post("/device", data=form)
        reply.raise_for_status()
        return reply.json()

    def login(self, user: str, groups: list[str] | None = None,
              scope: str = "openid offline_access fedcompute",
              client_id: str = CLI_CLIENT) -> oauth.OAuthSession:
        """The whole device flow through the SDK's own client code, the approval included."""
        metadata = oauth.discover(self.discovery_url)
        grant = oauth.start_device_flow(metadata, client_id, scope)
        self.approve(grant.user_code, user, groups)
        return oauth.finish_device_flow(metadata, client_id, grant)

    def client(self, service_url: str, user: str, groups: list[str] | None = None,
               scope: str = "openid offline_access fedcompute", **kwargs: Any) -> Client:
        """A fedcompute Client signed in as ``user`` with a refreshing access token."""
        session = self.login(user, groups, scope)
        return Client(service_url, auth=oauth.RefreshingAuth(session), **kwargs)

    # --- test controls -----------------------------------------------------------------

    def mint(self, user: str, scope: str = "fedcompute", kid: str | None = None,
             **claims: Any) -> str:
        """A JWT signed by the provider's key, with ``claims`` replacing the usual ones."""
        body = {"user": user, "scope": scope, "claims": claims, "kid": kid}
        return self.http.post("/test/mint", json=body).raise_for_status().json()["access_token"]

    def rotate(self, keep_old: bool = True) -> str:
        return self.http.post("/test/rotate", json={"keep_old": keep_old}).json()["kid"]

    def set_groups(self, user: str, groups: list[str]) -> None:
        self.http.post(f"/test/users/{user}", json={"groups": groups}).raise_for_status()

    def stats(self) -> dict:
        return self.http.get("/test/stats").json()


def issuer_entry(provider: Provider, **overrides: Any) -> dict:
    """The service's configuration of ``provider`` as an issuer."""
    entry: dict[str, Any] = {
        "issuer": provider.issuer, "audience": "fedcompute", "client_id": CLI_CLIENT,
        "username_claim": "preferred_username", "groups_claim": "groups", "leeway": 1,
    }
    if provider.opaque:
        entry.update(token_format="opaque", introspection_client_id=SERVICE_CLIENT,
                     introspection_client_secret=SERVICE_SECRET, username_claim="username")
    entry.update(overrides)
    return entry


def write_config(path: Path, issuers: list[dict], **top: Any) -> Path:
    """The ``FEDCOMPUTE_OIDC_CONFIG`` file: ``issuers`` plus top-level settings."""
    data = {"issuers": issuers, "jwks_min_refetch_seconds": 2, "introspection_cache_seconds": 1,
            **top}
    path.write_text(yaml.safe_dump(data))
    return path


class CLILogin:
    """``fedcompute login URL --oidc`` as a user runs it, in a process of its own."""

    def __init__(self, env: dict, service_url: str, *extra: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fedcompute.cli", "login", service_url, "--oidc", *extra],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._code = threading.Event()
        self.user_code = ""
        self.verification = ""
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("To sign in, open "):
                self.verification = line.removeprefix("To sign in, open ").strip()
            if "enter the code:" in line:
                self.user_code = line.rsplit(":", 1)[1].strip()
                self._code.set()

    def code(self, timeout: float = 60) -> str:
        if not self._code.wait(timeout):
            self.proc.kill()
            raise AssertionError(f"no user code printed: {self.lines} {self.proc.stderr.read()}")
        return self.user_code

    def wait(self, timeout: float = 60) -> tuple[int, str, str]:
        code = self.proc.wait(timeout)
        return code, "".join(self.lines), self.proc.stderr.read()


__all__ = ["AUTOMATION_CLIENT", "CLI_CLIENT", "CLILogin", "Provider", "issuer_entry",
           "write_config"]
