"""``fedcompute task ...``: tasks from the command line (show, list, cancel, resubmit).

Output is plain tab-separated lines (``--json`` for machines), so that it pipes into ``cut``,
``grep`` and ``xargs fedcompute task cancel``."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import click

from . import errors

#: States a task ends in.
FINAL = ("success", "failed", "cancelled")


def _client():
    from .client import Client

    try:
        return Client()
    except errors.FedComputeError as exc:
        raise click.ClickException(str(exc)) from exc


def _when(stamp: float | None) -> str:
    if not stamp:
        return "-"
    return dt.datetime.fromtimestamp(stamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _fail(exc: errors.FedComputeError) -> click.ClickException:
    return click.ClickException(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


@click.group()
def task() -> None:
    """Look at, cancel and resubmit tasks."""


@task.command()
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="the record as JSON")
def show(task_id: str, as_json: bool) -> None:
    """A task's state, where it ran, every timestamp, and its result or error."""
    client = _client()
    try:
        record = client.get_task_record(task_id)
        info = client._present(record)  # get_task's view of the same record: one request
    except errors.FedComputeError as exc:
        raise _fail(exc) from exc
    if as_json:
        shown = {k: v for k, v in record.items() if k not in ("result", "exception")}
        if "exception" in info:
            shown["exception"] = f"{type(info['exception']).__name__}: {info['exception']}"
        elif "result" in info:
            shown["result"] = repr(info["result"])
        click.echo(json.dumps(shown, indent=2, default=str))
        return
    click.echo(f"task       {record['task_id']}")
    click.echo(f"state      {record['status']}")
    for key in ("function_id", "endpoint_id", "task_group_id", "attempts"):
        click.echo(f"{key.replace('_id', '').replace('_', ' '):<10} {record.get(key)}")
    worker = record.get("worker") or {}
    if worker:
        click.echo(f"worker     {worker.get('host')} pid {worker.get('pid')}")
    click.echo("timeline")
    for state, stamp in sorted((record.get("timestamps") or {}).items(), key=lambda i: i[1]):
        click.echo(f"  {_when(stamp)}  {state}")
    if "exception" in info:
        exc = info["exception"]
        click.echo(f"error      {type(exc).__name__}: {str(exc).strip()}")
    elif "result" in info:
        text = repr(info["result"])
        click.echo(f"result     {text if len(text) <= 500 else text[:500] + '…'}")
    for stream in ("stdout", "stderr"):
        if info.get(stream):
            click.echo(f"{stream}:\n{info[stream].rstrip()}")


@task.command("list")
@click.option("--group", "group", required=True, help="the task group (Executor.task_group_id)")
@click.option("--state", "states", multiple=True,
              help="only tasks in this state (repeat for several; 'pending': not ended)")
@click.option("--limit", type=int, default=None, help="at most this many lines")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
def list_tasks(group: str, states: tuple[str, ...], limit: int | None, as_json: bool) -> None:
    """The tasks of a group: id, state, attempts, last change."""
    client = _client()
    try:
        ids = client.get_task_group(group)
        records = client.get_task_records(ids)
    except errors.FedComputeError as exc:
        raise _fail(exc) from exc
    shown = 0
    for task_id in ids:
        record = records.get(task_id)
        if record is None:
            continue
        state = record["status"]
        if states and state not in states and not ("pending" in states and state not in FINAL):
            continue
        stamps = record.get("timestamps") or {}
        last = max(stamps.values(), default=None)
        if as_json:
            click.echo(json.dumps({"task_id": task_id, "state": state,
                                   "attempts": record.get("attempts"), "at": last}))
        else:
            click.echo(f"{task_id}\t{state}\t{record.get('attempts') or 0}\t{_when(last)}")
        shown += 1
        if limit is not None and shown >= limit:
            break


@task.command()
@click.argument("task_ids", nargs=-1)
@click.option("--group", default=None, help="cancel every unfinished task of this group")
def cancel(task_ids: tuple[str, ...], group: str | None) -> None:
    """Cancel tasks (running ones are stopped at their endpoint), or a whole group."""
    if bool(task_ids) == bool(group):
        raise click.UsageError("give task ids or --group, not both")
    client = _client()
    try:
        if group:
            states = client.cancel_task_group(group)
            click.echo(", ".join(f"{n} {state}" for state, n in sorted(states.items()))
                       or "the group has no tasks")
            return
        for task_id, state in client.cancel_tasks(list(task_ids)).items():
            click.echo(f"{task_id}\t{state}")
    except errors.FedComputeError as exc:
        raise _fail(exc) from exc


@task.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def resubmit(path: Path) -> None:
    """Send tasks a script saved because it could not reach the service before it exited.

    Their ids are kept: tasks the service did receive are not run twice."""
    from .executor import resubmit_unsent

    count = resubmit_unsent(path)
    click.echo(f"sent {count} tasks from {path}")
