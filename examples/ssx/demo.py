"""The one-command demo: generate a run, push it through the pipeline on one or more engines
on a fedcompute endpoint, and print what came out.

Run it with the stack up, e.g. on the embedded stack::

    fedcompute dev --run "python -m fedcompute_ssx demo --engine all"

``fedcompute dev --run`` sets ``FEDCOMPUTE_SERVICE_URL``, ``FEDCOMPUTE_TOKEN`` and
``FEDCOMPUTE_ENDPOINT_ID``. The endpoint must see the demo's folders (it does on the embedded
stack, which runs on this machine).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from pathlib import Path

from .flows import ENGINES, runner

#: Engines ``--engine all`` runs, in this order (the Executor reference only on request).
ALL = ("prefect", "airflow", "dask")


def fedcompute_home() -> Path:
    """``$FEDCOMPUTE_HOME``, else ``~/.fedcompute`` (where ``fedcompute dev`` keeps its state)."""
    return Path(os.environ.get("FEDCOMPUTE_HOME") or Path.home() / ".fedcompute")


def quiet_engines(verbose: bool = False) -> None:
    """Defaults that keep engine chatter out of the summary and Prefect's state out of the
    user's own Prefect home (only where the user has not chosen already)."""
    home = fedcompute_home() / "ssx"
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # A Prefect API the user configured (PREFECT_API_URL or a profile in PREFECT_HOME) is
    # used as is; otherwise Prefect starts a temporary server with its database in here.
    if not (os.environ.get("PREFECT_API_URL") or os.environ.get("PREFECT_HOME")):
        os.environ["PREFECT_HOME"] = str(home / "prefect")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect's 20 s default for its temporary server to answer is too short on a busy
    # laptop or a shared 2-core node (seen in CI: "Timed out ... ephemeral Prefect API server").
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def run_engine(engine: str, master: str, work_dir: str, *, endpoint_id: str, client=None,
               airflow_home: str | None = None, **options) -> dict:
    """Run the pipeline of ``master`` with ``engine``; the record gets ``wall_seconds``.

    Airflow runs in ``airflow_home`` (default: ``$FEDCOMPUTE_HOME/ssx/airflow``, never the
    user's own AIRFLOW_HOME, since its database gets migrated).
    """
    if engine == "airflow":
        options["airflow_home"] = airflow_home or str(fedcompute_home() / "ssx" / "airflow")
    t0 = time.perf_counter()
    record = runner(engine)(master, work_dir, endpoint_id=endpoint_id, client=client, **options)
    record["wall_seconds"] = time.perf_counter() - t0
    return record


def warm_up(endpoint_id: str, client, master: str, tasks: int = 4) -> None:
    """Load the analysis code (imports, pyFAI's integrator) into the endpoint's worker
    processes, so that the first engine is not charged for it."""
    from fedcompute import Executor

    from .flows.common import warm

    with Executor(endpoint_id=endpoint_id, client=client) as ex:
        for future in [ex.submit(warm, master) for _ in range(tasks)]:
            future.result()


def simulate(out_dir: Path, *, frames: int, shape: int, hit_fraction: float, seed: int,
             workers: int = 2) -> dict:
    """The beamline: write a run (NeXus master, data files of 100 frames, truth) in parallel."""
    from .simulate import simulate_run

    kwargs = dict(n_frames=frames, shape=shape, hit_fraction=hit_fraction, seed=seed,
                  frames_per_file=min(100, max(1, -(-frames // workers))), name="ssx")
    if workers > 1 and frames > 1:
        with ProcessPoolExecutor(workers) as pool:
            return simulate_run(out_dir, executor=pool, **kwargs)
    return simulate_run(out_dir, **kwargs)


def run_demo(*, engines: Sequence[str] = ALL, frames: int = 200, shape: int = 1024,
             hit_fraction: float = 0.3, seed: int = 0, frames_per_chunk: int = 20,
             threshold: float = 0.05, endpoint_id: str | None = None,
             work_root: str | None = None, catalogue: str | None = None,
             repository: str | None = None, owner: str | None = None,
             share: Sequence[str] = (), airflow_home: str | None = None,
             keep: bool = False, verbose: bool = False, echo: Callable[[str], None] = print) -> dict:
    """Simulate a run, run the pipeline on each engine, print and return a summary.

    Returns ``{"dataset": {...}, "runs": {engine: record or {"error": ...}}, ...}``; each
    record is the pipeline's (see ``fedcompute_ssx.flows.common.result``) plus ``wall_seconds``.
    Airflow runs in ``airflow_home`` (see :func:`run_engine`).
    """
    from fedcompute import Client

    from .cli import default_catalogue

    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        raise ValueError(f"unknown engine(s) {unknown}; choose from {', '.join(ENGINES)}")
    endpoint_id = endpoint_id or os.environ.get("FEDCOMPUTE_ENDPOINT_ID")
    if not endpoint_id:
        raise RuntimeError("no endpoint: pass --endpoint-id or run under "
                           "`fedcompute dev --run ...` (it sets FEDCOMPUTE_ENDPOINT_ID)")
    quiet_engines(verbose)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    root = Path(work_root) if work_root else fedcompute_home() / "ssx" / "demo" / stamp
    catalogue = catalogue or default_catalogue()
    repository = repository or str(Path(catalogue).parent / "repository")

    echo(f"SSX demo: simulating {frames} frames of {shape}x{shape} "
         f"(hit fraction {hit_fraction}, seed {seed}) ...")
    # Before any client thread starts: the simulator forks worker processes.
    sim = simulate(root / "beamline", frames=frames, shape=shape, hit_fraction=hit_fraction,
                   seed=seed)
    truth = json.loads(Path(sim["truth"]).read_text())
    echo(f"  {len(sim['data_files'])} data file(s) in {sim['seconds']:.1f} s -> "
         f"{sim['master']} ({truth['n_hits']} true hits)")

    client = Client()
    owner = owner or client.whoami().get("name") or "beamline"
    status = client.get_endpoint_status(endpoint_id)
    if status.get("status") != "online":
        raise RuntimeError(f"endpoint {endpoint_id} is {status.get('status')}; start it first")

    echo("warming up the endpoint's workers (imports, pyFAI set-up) ...")
    warm_up(endpoint_id, client, sim["master"])
    runs: dict[str, dict] = {}
    for engine in engines:
        work_dir = root / engine
        echo(f"[{engine}] running the pipeline on endpoint {endpoint_id} ...")
        try:
            record = run_engine(
                engine, sim["master"], str(work_dir), endpoint_id=endpoint_id, client=client,
                airflow_home=airflow_home, frames_per_chunk=frames_per_chunk,
                threshold=threshold, repository=repository, catalogue=catalogue, owner=owner,
                allowed_users=list(share),
                title=f"SSX demo: lysozyme, {frames} frames, {engine} pipeline")
        except Exception as exc:  # noqa: BLE001 - report it, go on with the other engines
            runs[engine] = {"engine": engine, "error": f"{type(exc).__name__}: {exc}",
                            "traceback": traceback.format_exc()}
            echo(f"[{engine}] FAILED: {type(exc).__name__}: {str(exc)[-2000:]}")
            continue
        runs[engine] = record
        echo(f"[{engine}] {_one_line(record)}")
        if not keep:  # the big parts: the staged frames and the saved chunk results
            for part in ("raw", "chunks"):
                shutil.rmtree(work_dir / part, ignore_errors=True)
    if not keep:
        shutil.rmtree(root / "beamline", ignore_errors=True)

    summary = {"dataset": {"frames": frames, "shape": shape, "hit_fraction": hit_fraction,
                           "seed": seed, "true_hits": truth["n_hits"],
                           "master": sim["master"] if keep else None},
               "endpoint_id": endpoint_id, "owner": owner, "catalogue": catalogue,
               "repository": repository, "work_dir": str(root), "threshold": threshold,
               "frames_per_chunk": frames_per_chunk, "runs": runs}
    echo("")
    echo(format_demo(summary))
    return summary


def _one_line(record: dict) -> str:
    check = record["check"]
    text = (f"hit rate {check['hit_rate']:.1%} -> "
            f"{'QA + publication' if check['passed'] else 'below threshold, QA skipped'}")
    evaluation = (record["qa"] or {}).get("evaluation")
    if evaluation:
        text += (f"; precision {evaluation['precision']:.3f}, "
                 f"recall {evaluation['recall']:.3f}")
    return f"{text}; {record['wall_seconds']:.1f} s"


def format_demo(summary: dict) -> str:
    """The demo's summary: one row per engine, then where the plots and datasets are."""
    ds = summary["dataset"]
    lines = [f"Summary: {ds['frames']} frames {ds['shape']}x{ds['shape']}, "
             f"{ds['true_hits']} true hits, chunks of {summary['frames_per_chunk']} frames, "
             f"hit-rate threshold {summary['threshold']:.0%}, owner {summary['owner']}",
             "",
             f"{'engine':<9} {'frames':>6} {'hits found/true':>15} {'precision':>9} "
             f"{'recall':>6} {'analysis fr/s':>13} {'pipeline s':>10} {'overall fr/s':>12}"]
    for engine, run in summary["runs"].items():
        if "error" in run:
            lines.append(f"{engine:<9} FAILED: {run['error'][:100]}")
            continue
        check, ev = run["check"], (run["qa"] or {}).get("evaluation")
        analysis = check["analysis"]["frames_per_second"] or 0.0
        overall = check["n_frames"] / run["wall_seconds"]
        if ev:
            found = f"{ev['hits_found']}/{ev['hits_true']}"
            quality = f"{ev['precision']:>9.3f} {ev['recall']:>6.3f}"
        else:
            found = f"{check['n_hits']}/{ds['true_hits']}"
            quality = f"{'(no QA)':>9} {'':>6}"
        lines.append(f"{engine:<9} {check['n_frames']:>6} {found:>15} {quality} "
                     f"{analysis:>13.1f} {run['wall_seconds']:>10.1f} {overall:>12.1f}")
    lines += ["", "analysis fr/s: frames / span of the chunk analyses on the endpoint; "
              "pipeline s and overall fr/s: the whole pipeline, engine start-up included", ""]
    for engine, run in summary["runs"].items():
        published = run.get("published")
        if published:
            path = Path(published["path"])
            plots = ", ".join(sorted((run["qa"] or {}).get("plots", {}).values()))
            lines.append(f"[{engine}] dataset {published['dataset_id']}")
            lines.append(f"    QA plots:  {path}/{{{plots}}}")
        elif "error" not in run:
            lines.append(f"[{engine}] hit rate below the threshold: not published")
    owner = summary["owner"]
    lines += [f"catalogue:  {summary['catalogue']} (owner {owner}, readable by "
              f"{', '.join(_shared(summary)) or 'the owner only'})",
              f"search it:  python -m fedcompute_ssx search lysozyme --user {owner} "
              f"--catalogue {summary['catalogue']}"]
    first = next((r["published"]["dataset_id"] for r in summary["runs"].values()
                  if r.get("published")), None)
    if first:
        lines.append(f"one entry: python -m fedcompute_ssx show {first} --user {owner} "
                     f"--catalogue {summary['catalogue']}")
    return "\n".join(lines)


def _shared(summary: dict) -> list[str]:
    for run in summary["runs"].values():
        if run.get("published"):
            return run["published"].get("allowed_users", [])
    return []

