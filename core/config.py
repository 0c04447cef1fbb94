"""Where fedcompute keeps its state, and how the SDK finds the service and its token."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


def home() -> Path:
    """The fedcompute state folder: ``$FEDCOMPUTE_HOME`` or ``~/.fedcompute``."""
    return Path(os.environ.get("FEDCOMPUTE_HOME") or Path.home() / ".fedcompute")


def credentials_path() -> Path:
    return home() / "credentials.json"


@dataclass(frozen=True)
class Credentials:
    service_url: str
    token: str


def load_credentials(service_url: str | None = None, token: str | None = None) -> Credentials:
    """Resolve the service URL and token: arguments, then environment, then ``fedcompute login``."""
    service_url = service_url or os.environ.get("FEDCOMPUTE_SERVICE_URL")
    token = token or os.environ.get("FEDCOMPUTE_TOKEN")
    if not (service_url and token):
        path = credentials_path()
        if path.exists():
            saved = json.loads(path.read_text())
            service_url = service_url or saved.get("service_url")
            token = token or saved.get("token")
    if not service_url:
        raise RuntimeError(
            "no fedcompute service configured: pass service_url=, set FEDCOMPUTE_SERVICE_URL, "
            "or run `fedcompute login URL`"
        )
    if not token:
        raise RuntimeError(
            "no fedcompute token: pass token=, set FEDCOMPUTE_TOKEN, or run `fedcompute login`"
        )
    return Credentials(service_url.rstrip("/"), token)


def save_credentials(service_url: str, token: str) -> Path:
    """Write the login file, readable by its owner only."""
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"service_url": service_url.rstrip("/"), "token": token}))
    tmp.chmod(0o600)
    tmp.replace(path)
    return path
