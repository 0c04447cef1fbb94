"""Template filters: times (UTC), ages, durations, sizes, short ids. Each returns plain text;
Jinja escapes it like everything else."""

from __future__ import annotations

import datetime
import time

from . import bp


@bp.app_template_filter("when")
def when(ts: float | None) -> str:
    """A timestamp as ``2026-12-03 14:05:06.123 UTC``."""
    if not ts:
        return "—"
    moment = datetime.datetime.fromtimestamp(ts, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d} UTC"


@bp.app_template_filter("ago")
def ago(ts: float | None, now: float | None = None) -> str:
    """How long ago, roughly: ``12 s ago``, ``3 min ago``, ``2 h ago``, ``4 d ago``."""
    if not ts:
        return "never"
    delta = max(0.0, (now or time.time()) - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if delta >= size:
            return f"{int(delta // size)} {unit} ago"
    return f"{int(delta)} s ago"


@bp.app_template_filter("seconds")
def seconds(value: float | None) -> str:
    """A duration: ``850 µs``, ``12 ms``, ``1.25 s``, ``3 min 4 s``, ``2 h 5 min``."""
    if value is None:
        return "—"
    if value == 0:
        return "0 s"
    if value < 1e-3:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1e3:.0f} ms"
    if value < 60:
        return f"{value:.2f} s"
    if value < 3600:
        return f"{int(value // 60)} min {int(value % 60)} s"
    return f"{int(value // 3600)} h {int(value % 3600 // 60)} min"


@bp.app_template_filter("size")
def size(n: int | None) -> str:
    """Bytes as ``812 B``, ``1.5 KiB``, ``3.2 MiB``."""
    if n is None:
        return "—"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


@bp.app_template_filter("short")
def short(identifier: str | None, n: int = 8) -> str:
    """The first ``n`` characters of an id (the full id goes in a title or link)."""
    return (identifier or "")[:n]


@bp.app_template_filter("thousands")
def thousands(n: int) -> str:
    return f"{n:,}"
