"""Shared fixtures: ``fed_stack``, one real stack for the whole test session."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from fedcompute.testing import LocalStack as Stack


@pytest.fixture(scope="session")
def fed_stack(tmp_path_factory):
    """A real service + an endpoint named ``local`` (2 Dask worker processes) + user ``alice``.

    Attributes: ``service_url``, ``token``, ``endpoint_id``, ``home``; ``client()`` returns a
    ``fedcompute.Client`` for alice; ``create_user(name)`` returns a new user's token.
    """
    stack = Stack(tmp_path_factory.mktemp("fedcompute-home"))
    try:
        stack.up()
        yield stack
    finally:
        stack.down()


_REPORT_KEY = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    # tests/reliability/helpers.report() appends one JSON line per fault/load test here (also
    # from subprocesses); the table is printed at the end of the run, so CI logs carry it.
    if not os.environ.get("FEDCOMPUTE_RELIABILITY_REPORT"):
        fd, path = tempfile.mkstemp(prefix="fedcompute-reliability-", suffix=".jsonl")
        os.close(fd)
        os.environ["FEDCOMPUTE_RELIABILITY_REPORT"] = path
        config.stash[_REPORT_KEY] = path


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    path = os.environ.get("FEDCOMPUTE_RELIABILITY_REPORT", "")
    lines = Path(path).read_text().splitlines() if path and Path(path).exists() else []
    if lines:
        terminalreporter.section("fault / load measurements (tasks in flight, lost, figures)")
        for line in lines:
            row = json.loads(line)
            terminalreporter.write_line(f"{row.pop('name')}: {json.dumps(row, sort_keys=True)}")
    own = config.stash.get(_REPORT_KEY, None)
    if own:
        Path(own).unlink(missing_ok=True)
