"""Give a task's worker slot back while it waits for tasks it submitted (nested submission).

A task that submits tasks and waits for them holds its slot meanwhile: when every slot holds a
waiting parent, the children never start. Dask's answer is ``distributed.secede``; the
endpoint's fast lane registers its own (the lane starts a spare executor). Whatever runs the
task registers how; :func:`leave` uses the first that applies.
"""

from __future__ import annotations

from collections.abc import Callable

_ways: list[Callable[[], bool]] = []


def register(way: Callable[[], bool]) -> None:
    """Add a way to leave the slot: a callable that returns whether it did."""
    _ways.append(way)


def _dask_secede() -> bool:
    try:
        from distributed import secede
        from distributed.worker import get_worker

        get_worker()  # raises outside a Dask task: nothing to free then
        secede()
    except Exception:  # noqa: BLE001 - not in a Dask task
        return False
    return True


def leave() -> str | None:
    """Leave this task's slot; returns how (``"dask"``, ``"lane"``) or None if not in one."""
    if _dask_secede():
        return "dask"
    for way in _ways:
        if way():
            return "lane"
    return None


def rejoin(how: str | None) -> None:
    """Take the slot back after :func:`leave` (Dask: ``rejoin``; a lane's spare executor
    retires by itself when the task ends)."""
    if how == "dask":
        from distributed import rejoin as dask_rejoin

        dask_rejoin()
