"""Helpers for the batch-system tests."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something true; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def task_env(*names: str) -> dict:
    """Run inside a worker: these environment variables (e.g. the batch job's id)."""
    import os

    return {name: os.environ.get(name) for name in names}


def batch_jobs(command: list[str]) -> str:
    return subprocess.run(command, capture_output=True, text=True, timeout=30).stdout
