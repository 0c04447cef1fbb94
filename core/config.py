"""Where fedcompute keeps its state, and how the SDK finds the service and its token.

The credentials file (``$FEDCOMPUTE_HOME/credentials.json``, mode 0600) holds either a static
token, as it always has::

    {"service_url": "https://compute.example.org", "token": "fcu_..."}

or an OpenID Connect login (``fedcompute login --oidc``), whose tokens are refreshed in place::

    {"service_url": "https://compute.example.org",
     "oauth": {"issuer": "...", "client_id": "...", "token_endpoint": "...",
               "revocation_endpoint": "...", "access_token": "...", "refresh_token": "...",
               "expires_at": 1767225600.0, "lifetime": 300.0, "scope": "openid ..."}}
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .oauth import OAuthSession


def home() -> Path:
    """The fedcompute state folder: ``$FEDCOMPUTE_HOME`` or ``~/.fedcompute``."""
    return Path(os.environ.get("FEDCOMPUTE_HOME") or Path.home() / ".fedcompute")


def credentials_path() -> Path:
    return home() / "credentials.json"


@dataclass(frozen=True)
class Credentials:
    """The service and how to authenticate to it: a static ``token``, or an ``oauth`` login
    (then ``token`` is empty, so that ``Client(creds.service_url, creds.token)`` finds the
    login and refreshes its access token)."""

    service_url: str
    token: str
    oauth: OAuthSession | None = None


def load_saved(path: Path | None = None) -> dict:
    """The credentials file's contents ({} if there is none)."""
    path = path or credentials_path()
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


def load_credentials(service_url: str | None = None, token: str | None = None) -> Credentials:
    """Resolve the service URL and token: arguments, then environment, then ``fedcompute login``.

    A saved OpenID Connect login is used only for the service it was made with."""
    service_url = service_url or os.environ.get("FEDCOMPUTE_SERVICE_URL")
    token = token or os.environ.get("FEDCOMPUTE_TOKEN")
    oauth = None
    if not (service_url and token):
        saved = load_saved()
        saved_url = (saved.get("service_url") or "").rstrip("/")
        service_url = service_url or saved_url
        token = token or saved.get("token")
        if not token and isinstance(saved.get("oauth"), dict) and service_url \
                and service_url.rstrip("/") == saved_url:
            oauth = OAuthSession.from_dict(saved["oauth"])
    if not service_url:
        raise RuntimeError(
            "no fedcompute service configured: pass service_url=, set FEDCOMPUTE_SERVICE_URL, "
            "or run `fedcompute login URL`"
        )
    if not token and oauth is None:
        raise RuntimeError(
            "no fedcompute token: pass token=, set FEDCOMPUTE_TOKEN, or run `fedcompute login`"
        )
    return Credentials(service_url.rstrip("/"), token or "", oauth)


def _write(path: Path, data: dict) -> None:
    """Replace the file atomically, readable by its owner only (from its first byte on)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(data))
    tmp.chmod(0o600)
    tmp.replace(path)


def save_credentials(service_url: str, token: str | None = None,
                     oauth: OAuthSession | None = None) -> Path:
    """Write the login file (a static ``token`` or an ``oauth`` login), mode 0600."""
    path = credentials_path()
    data: dict = {"service_url": service_url.rstrip("/")}
    if oauth is not None:
        data["oauth"] = oauth.to_dict()
    else:
        data["token"] = token
    with credentials_lock():
        _write(path, data)
    return path


def delete_credentials() -> Path:
    path = credentials_path()
    with credentials_lock():
        path.unlink(missing_ok=True)
    return path


@contextlib.contextmanager
def credentials_lock() -> Iterator[None]:
    """Held while the credentials file is read for a refresh and rewritten (across processes)."""
    path = credentials_path().with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class FileTokenStore:
    """``oauth.TokenStore`` on the credentials file: refreshed tokens are written back, so
    every process sharing the login sees the current refresh token."""

    def __init__(self, service_url: str):
        self.service_url = service_url.rstrip("/")

    def lock(self) -> contextlib.AbstractContextManager:
        return credentials_lock()

    def load(self) -> OAuthSession | None:
        saved = load_saved()
        if saved.get("service_url", "").rstrip("/") != self.service_url \
                or not isinstance(saved.get("oauth"), dict):
            return None
        return OAuthSession.from_dict(saved["oauth"])

    def save(self, session: OAuthSession) -> None:
        # Called with the lock held (RefreshingAuth), so no second lock here.
        saved = load_saved()
        if saved.get("service_url", "").rstrip("/") != self.service_url:
            return  # logged in elsewhere meanwhile: keep this session to this process
        saved["oauth"] = session.to_dict()
        saved.pop("token", None)
        _write(credentials_path(), saved)


def service_url_of(service_url: str | None = None) -> str:
    """The service URL alone (for clients given their own ``auth``)."""
    url = service_url or os.environ.get("FEDCOMPUTE_SERVICE_URL") or \
        load_saved().get("service_url")
    if not url:
        raise RuntimeError("no fedcompute service configured: pass service_url=, set "
                           "FEDCOMPUTE_SERVICE_URL, or run `fedcompute login URL`")
    return url.rstrip("/")
