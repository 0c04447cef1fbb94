"""``fedcompute task ...``: tasks from the command line."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def task() -> None:
    """Look at, cancel and resubmit tasks."""


@task.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def resubmit(path: Path) -> None:
    """Send tasks a script saved because it could not reach the service before it exited.

    Their ids are kept: tasks the service did receive are not run twice."""
    from .executor import resubmit_unsent

    count = resubmit_unsent(path)
    click.echo(f"sent {count} tasks from {path}")
