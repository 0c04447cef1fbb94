"""The versions that must agree between the SDK and an endpoint, and how to compare them."""

from __future__ import annotations

import importlib.metadata
import platform

#: package -> how many leading version parts must agree (0: the whole version).
DASK_RULES = {"python": 2, "dask": 0, "distributed": 0, "cloudpickle": 2}
#: What running a serialized function needs: the same Python and cloudpickle minor versions.
TASK_RULES = {"python": 2, "cloudpickle": 2}


def versions(*packages: str) -> dict[str, str]:
    """``{"python": "3.11.7", package: version, ...}`` for the installed packages named."""
    found = {"python": platform.python_version()}
    for name in packages:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def _leading(version: str, parts: int) -> str:
    return ".".join(version.split(".")[:parts]) if parts else version


def mismatches(local: dict[str, str], remote: dict[str, str],
               rules: dict[str, int]) -> list[str]:
    """One line per package whose versions disagree under ``rules`` (a package either side
    does not report is not compared)."""
    problems = []
    for name, parts in rules.items():
        mine, theirs = local.get(name), remote.get(name)
        if mine and theirs and _leading(mine, parts) != _leading(theirs, parts):
            problems.append(f"  {name:<12} client {mine:<12} endpoint {theirs}")
    return problems
