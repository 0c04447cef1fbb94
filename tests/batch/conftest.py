"""Fixtures for tests on real batch systems (Slurm, Grid Engine) started by ``.ci/*/start.sh``.

A system's tests skip, with the reason shown by ``pytest -rs``, only where that system is not
installed; installed but not answering is a failure (CI starts it before the tests).
Measured numbers are printed at the end of the run.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fedcompute.endpoint.engines import get_engine
from fedcompute.endpoint.engines.base import Engine

MEASUREMENTS: list[tuple[str, float, str]] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if MEASUREMENTS:
        terminalreporter.section("batch engine measurements")
        for name, value, unit in MEASUREMENTS:
            terminalreporter.write_line(f"{name:<52} {value:10.2f} {unit}")


@pytest.fixture
def measure() -> Callable[[str, float, str], None]:
    """``measure(name, value, unit)``: report a number at the end of the run."""
    return lambda name, value, unit: MEASUREMENTS.append((name, value, unit))


def _answers(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="session")
def slurm() -> None:
    """Slurm is installed and its controller answers with a usable node."""
    if shutil.which("sbatch") is None:
        pytest.skip("Slurm is not installed here (no sbatch on PATH); "
                    "as root: bash .ci/slurm/start.sh")
    states = ""
    for _ in range(30):
        result = _answers(["sinfo", "--noheader", "--format", "%T"])
        states = result.stdout + result.stderr
        if any(s in result.stdout for s in ("idle", "mix", "alloc")):
            return
        time.sleep(1)
    pytest.fail(f"Slurm is installed but has no usable node (sinfo: {states.strip()!r}); "
                "start it with: bash .ci/slurm/start.sh")


@pytest.fixture(scope="session")
def sge() -> None:
    """Grid Engine is installed and its qmaster answers with a queue instance."""
    if shutil.which("qconf") is None or shutil.which("qsub") is None:
        pytest.skip("Grid Engine is not installed here (no qconf/qsub on PATH); "
                    "as root: bash .ci/sge/start.sh")
    text = ""
    for _ in range(30):
        result = _answers(["qstat", "-f"])
        text = result.stdout + result.stderr
        if result.returncode == 0 and "lx-" in result.stdout:
            return
        time.sleep(1)
    pytest.fail(f"Grid Engine is installed but not answering (qstat -f: {text.strip()!r}); "
                "start it with: bash .ci/sge/start.sh")


@pytest.fixture
def start_engine(tmp_path: Path) -> Iterator[Callable[..., Engine]]:
    """``start_engine(type=..., **options)``: a started engine, closed (jobs cancelled) after
    the test."""
    engines: list[Engine] = []

    def start(**options: Any) -> Engine:
        engine = get_engine(options, tmp_path / f"endpoint{len(engines)}")
        engine.start()
        engines.append(engine)
        return engine

    yield start
    for engine in engines:
        engine.close()
