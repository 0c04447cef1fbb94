"""The ``ssx`` command group: simulate, analyse, run the pipeline, search the catalogue, and
``demo`` (the pipeline on Prefect, Airflow and Dask on a fedcompute endpoint).

Run it as ``python -m fedcompute_ssx ...`` (or ``fedcompute ssx ...`` once registered).
"""

from __future__ import annotations

import getpass
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import click


def default_catalogue() -> str:
    """``$FEDCOMPUTE_SSX_CATALOGUE``, else ``ssx/catalogue.sqlite`` in the fedcompute home."""
    home = Path(os.environ.get("FEDCOMPUTE_HOME") or Path.home() / ".fedcompute")
    return os.environ.get("FEDCOMPUTE_SSX_CATALOGUE") or str(home / "ssx" / "catalogue.sqlite")


catalogue_option = click.option("--catalogue", default=default_catalogue, show_default=True,
                                type=click.Path(dir_okay=False), help="catalogue SQLite file")
user_option = click.option("--user", default=lambda: os.environ.get("FEDCOMPUTE_SSX_USER")
                           or getpass.getuser(), show_default="$FEDCOMPUTE_SSX_USER or login",
                           help="who is asking (access is checked for this user)")


@click.group()
def ssx() -> None:
    """Serial crystallography example: simulated Eiger data, hit finding, QA, catalogue."""


@ssx.command()
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--frames", default=100, show_default=True)
@click.option("--shape", default=1024, show_default=True, help="detector rows = columns")
@click.option("--hit-fraction", default=0.3, show_default=True)
@click.option("--frames-per-file", default=100, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--name", default="ssx", show_default=True)
@click.option("--workers", default=1, show_default=True, help="local processes")
def simulate(out_dir: str, frames: int, shape: int, hit_fraction: float, frames_per_file: int,
             seed: int, name: str, workers: int) -> None:
    """Write a simulated run (Eiger-style NeXus master + data files + truth JSON)."""
    from .simulate import simulate_run

    kwargs = dict(n_frames=frames, shape=shape, hit_fraction=hit_fraction,
                  frames_per_file=frames_per_file, seed=seed, name=name)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            result = simulate_run(out_dir, executor=pool, **kwargs)
    else:
        result = simulate_run(out_dir, **kwargs)
    click.echo(f"{frames} frames in {result['seconds']:.1f} s -> {result['master']}")


@ssx.command()
@click.argument("master", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_dir", default="ssx-qa", show_default=True,
              type=click.Path(file_okay=False), help="QA output folder")
@click.option("--params", default=None, help="spot-finder parameters as JSON")
@click.option("--truth", default=None, type=click.Path(exists=True, dir_okay=False),
              help="truth sidecar (defaults to <name>_truth.json if present)")
def analyse(master: str, out_dir: str, params: str | None, truth: str | None) -> None:
    """Analyse a whole run on this machine and write the QA files."""
    from .evaluate import format_summary
    from .steps import analyse_chunk, qa

    truth = truth or _sidecar(master)
    result = analyse_chunk(master, 0, 2**62, json.loads(params) if params else None)
    summary = qa([result], out_dir, title=Path(master).stem, truth=truth)
    click.echo(f"hit rate {summary['hit_rate']:.1%} ({summary['n_hits']}/{summary['n_frames']})"
               f"; QA in {out_dir}")
    if "evaluation" in summary:
        click.echo(format_summary(summary["evaluation"]))


def _sidecar(master: str) -> str | None:
    path = Path(master.replace("_master.h5", "_truth.json"))
    return str(path) if path.exists() and path != Path(master) else None


@ssx.command()
@click.argument("master", type=click.Path(exists=True, dir_okay=False))
@click.argument("work_dir", type=click.Path(file_okay=False))
@click.option("--repository", default=None, type=click.Path(file_okay=False))
@catalogue_option
@user_option
@click.option("--share", multiple=True, help="user allowed to read the result ('*': everyone)")
@click.option("--threshold", default=0.05, show_default=True, help="minimum hit rate")
@click.option("--frames-per-chunk", default=100, show_default=True)
@click.option("--workers", default=1, show_default=True, help="local processes")
def run(master: str, work_dir: str, repository: str | None, catalogue: str, user: str,
        share: tuple[str, ...], threshold: float, frames_per_chunk: int, workers: int) -> None:
    """Run the whole data-capture pipeline locally (the fedcompute pipelines do it remotely)."""
    from .pipeline import run_pipeline

    kwargs = dict(frames_per_chunk=frames_per_chunk, threshold=threshold,
                  repository=repository or str(Path(work_dir) / "repository"),
                  catalogue=catalogue, owner=user, allowed_users=share)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            result = run_pipeline(master, work_dir, executor=pool, **kwargs)
    else:
        result = run_pipeline(master, work_dir, **kwargs)
    check = result["check"]
    click.echo(f"hit rate {check['hit_rate']:.1%} (threshold {threshold:.1%}): "
               f"{'passed' if check['passed'] else 'FAILED'}")
    if result["published"]:
        click.echo(f"published {result['published']['dataset_id']} -> "
                   f"{result['published']['path']}")


@ssx.command()
@click.argument("query", nargs=-1, required=True)
@catalogue_option
@user_option
@click.option("--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def search(query: tuple[str, ...], catalogue: str, user: str, limit: int, as_json: bool) -> None:
    """Full-text search of the datasets USER may read."""
    from .catalogue import Catalogue

    try:
        hits = Catalogue(catalogue).search(" ".join(query), user=user, limit=limit)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(hits, indent=1))
        return
    for hit in hits:
        click.echo(f"{hit['id']}  {hit['title']}  (owner {hit['owner']}, {hit['created']})")
        click.echo(f"    {hit['snippet']}")
    if not hits:
        click.echo("no matching datasets", err=True)


@ssx.command()
@click.argument("dataset_id")
@catalogue_option
@user_option
def show(dataset_id: str, catalogue: str, user: str) -> None:
    """Print one dataset's full catalogue entry (if USER may read it)."""
    from .catalogue import Catalogue

    try:
        entry = Catalogue(catalogue).get(dataset_id, user=user)
    except (KeyError, PermissionError) as exc:
        raise click.ClickException(exc.args[0]) from exc
    click.echo(json.dumps(entry, indent=1))


@ssx.command()
@click.argument("dataset_id")
@click.argument("users", nargs=-1, required=True)
@catalogue_option
@user_option
def share(dataset_id: str, users: tuple[str, ...], catalogue: str, user: str) -> None:
    """Let USERS read a dataset you own ('*' makes it public)."""
    from .catalogue import Catalogue

    try:
        Catalogue(catalogue).share(dataset_id, users, user=user)
    except (KeyError, PermissionError) as exc:
        raise click.ClickException(exc.args[0]) from exc
    click.echo(f"shared {dataset_id} with {', '.join(users)}")


@ssx.command(name="list")
@catalogue_option
@user_option
def list_datasets(catalogue: str, user: str) -> None:
    """List the datasets USER may read, newest first."""
    from .catalogue import Catalogue

    for entry in Catalogue(catalogue).list(user=user):
        click.echo(f"{entry['id']}  {entry['title']}  (owner {entry['owner']})")


@ssx.command()
@click.argument("master", type=click.Path(exists=True, dir_okay=False))
@click.argument("work_dir", type=click.Path(file_okay=False))
@click.option("--engine", type=click.Choice(["prefect", "airflow", "dask", "executor"]),
              default="prefect", show_default=True)
@click.option("--endpoint-id", envvar="FEDCOMPUTE_ENDPOINT_ID", required=True,
              help="default: $FEDCOMPUTE_ENDPOINT_ID")
@click.option("--frames-per-chunk", default=20, show_default=True, help="frames per analysis task")
@click.option("--threshold", default=0.05, show_default=True,
              help="minimum hit rate for QA and publication")
@click.option("--repository", default=None, type=click.Path(file_okay=False),
              help="default: 'repository' next to the catalogue")
@catalogue_option
@click.option("--user", default=None,
              help="owner of the published dataset (default: your fedcompute user name)")
@click.option("--share", multiple=True, help="user allowed to read the results ('*': everyone)")
@click.option("--title", default=None)
@click.option("--airflow-home", default=None, type=click.Path(file_okay=False),
              help="default: $FEDCOMPUTE_HOME/ssx/airflow")
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False),
              help="also write the pipeline record here")
def pipeline(master: str, work_dir: str, engine: str, endpoint_id: str, frames_per_chunk: int,
             threshold: float, repository: str | None, catalogue: str, user: str | None,
             share: tuple[str, ...], title: str | None, airflow_home: str | None,
             json_out: str | None) -> None:
    """Run the data-capture and publication pipeline of MASTER on a fedcompute endpoint with
    Prefect, Airflow, Dask or the plain Executor (the files must be visible to the endpoint)."""
    from fedcompute import Client

    from .demo import quiet_engines, run_engine
    from .evaluate import format_summary

    quiet_engines()
    client = Client()
    owner = user or client.whoami().get("name") or "beamline"
    record = run_engine(engine, str(Path(master).resolve()), str(Path(work_dir).resolve()),
                        endpoint_id=endpoint_id, client=client, airflow_home=airflow_home,
                        frames_per_chunk=frames_per_chunk, threshold=threshold,
                        repository=repository or str(Path(catalogue).parent / "repository"),
                        catalogue=catalogue, owner=owner, allowed_users=list(share),
                        title=title)
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(record, indent=1, default=str))
    check = record["check"]
    click.echo(f"[{engine}] hit rate {check['hit_rate']:.1%} (threshold {threshold:.1%}): "
               f"{'passed' if check['passed'] else 'below: QA and publication skipped'}; "
               f"{record['wall_seconds']:.1f} s")
    if record["qa"] and "evaluation" in record["qa"]:
        click.echo(format_summary(record["qa"]["evaluation"]))
    if record["published"]:
        click.echo(f"published {record['published']['dataset_id']} -> "
                   f"{record['published']['path']} (owner {owner})")


@ssx.command()
@click.option("--engine", "engine", default="all", show_default=True,
              help="prefect, airflow, dask or executor; several comma-separated; "
                   "all = prefect,airflow,dask")
@click.option("--frames", default=200, show_default=True)
@click.option("--shape", default=1024, show_default=True, help="detector rows = columns")
@click.option("--hit-fraction", default=0.3, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--frames-per-chunk", default=20, show_default=True, help="frames per analysis task")
@click.option("--threshold", default=0.05, show_default=True,
              help="minimum hit rate for QA and publication")
@click.option("--endpoint-id", default=None, help="default: $FEDCOMPUTE_ENDPOINT_ID")
@click.option("--work-dir", default=None, type=click.Path(file_okay=False),
              help="default: $FEDCOMPUTE_HOME/ssx/demo/<timestamp>")
@catalogue_option
@click.option("--repository", default=None, type=click.Path(file_okay=False),
              help="default: 'repository' next to the catalogue")
@click.option("--user", default=None,
              help="owner of the published datasets (default: your fedcompute user name)")
@click.option("--share", multiple=True, help="user allowed to read the results ('*': everyone)")
@click.option("--airflow-home", default=None, type=click.Path(file_okay=False),
              help="default: $FEDCOMPUTE_HOME/ssx/airflow")
@click.option("--keep", is_flag=True, help="keep the generated frames and staged copies")
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False),
              help="also write the full summary here")
@click.option("--verbose", is_flag=True, help="show the engines' own logs")
def demo(engine: str, frames: int, shape: int, hit_fraction: float, seed: int,
         frames_per_chunk: int, threshold: float, endpoint_id: str | None,
         work_dir: str | None, catalogue: str, repository: str | None, user: str | None,
         share: tuple[str, ...], airflow_home: str | None, keep: bool, json_out: str | None,
         verbose: bool) -> None:
    """Simulate a run and process it on a fedcompute endpoint with Prefect, Airflow and Dask.

    Run it with the stack up: fedcompute dev --run "python -m fedcompute_ssx demo".
    """
    from .demo import ALL, run_demo

    engines: list[str] = []
    for name in (e.strip() for e in engine.split(",")):
        for one in ALL if name == "all" else (name,) if name else ():
            if one not in engines:
                engines.append(one)
    try:
        summary = run_demo(engines=engines, frames=frames, shape=shape,
                           hit_fraction=hit_fraction, seed=seed,
                           frames_per_chunk=frames_per_chunk, threshold=threshold,
                           endpoint_id=endpoint_id, work_root=work_dir, catalogue=catalogue,
                           repository=repository, owner=user, share=share,
                           airflow_home=airflow_home, keep=keep, verbose=verbose,
                           echo=click.echo)
    except (ValueError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(summary, indent=1, default=str))
    failed = [e for e, run in summary["runs"].items() if "error" in run]
    if failed:
        raise click.ClickException(f"the pipeline failed on: {', '.join(failed)}")


def main() -> None:
    """Entry point of ``python -m fedcompute_ssx``."""
    ssx(prog_name="ssx")
