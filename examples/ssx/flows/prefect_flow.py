"""The SSX pipeline as a Prefect flow whose tasks run on a fedcompute endpoint.

``FederatedTaskRunner`` sends each task's body to the endpoint; Prefect's engine (states,
retries, logs) stays in this process. The analysis fans out with ``Task.map``, one task run per
chunk of frames; chunk results stay on the endpoint's disk and only small references come back.
The hit-rate check decides whether QA, the transfer of the results and publication run::

    from fedcompute_ssx.flows.prefect_flow import run_prefect
    run_prefect("data/ssx_master.h5", "work", endpoint_id="...", owner="alice")

or, with your own runner: ``ssx_pipeline.with_options(task_runner=...)(master, work_dir)``.
"""

from __future__ import annotations

import time
from pathlib import Path

from fedcompute import Client
from fedcompute.plugins.prefect import FederatedTaskRunner
from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE

from . import common

# The bodies are the shared step functions themselves (pickled by reference: the endpoint
# needs fedcompute_ssx, not Prefect). No caching: inputs are paths whose content changes.
_options = {"cache_policy": NO_CACHE}
transfer_raw = task(common.stage, name="transfer_raw", retries=1, **_options)
plan_chunks = task(common.plan, name="plan_chunks", **_options)
analyse_chunk = task(common.analyse, name="analyse_chunk", retries=1, **_options)
check_threshold = task(common.check, name="check_threshold", **_options)
qa = task(common.run_qa, name="qa", **_options)
transfer_results = task(common.move_results, name="transfer_results", retries=1, **_options)
publish = task(common.publish, name="publish", **_options)


@flow(name="ssx-data-capture", log_prints=True)
def ssx_pipeline(master: str, work_dir: str, frames_per_chunk: int = common.FRAMES_PER_CHUNK,
                 spot_params: dict | None = None, threshold: float = common.THRESHOLD,
                 repository: str | None = None, catalogue: str | None = None,
                 owner: str = "beamline", allowed_users: list[str] | None = None,
                 title: str | None = None, use_truth: bool = True) -> dict:
    """Transfer, analyse (fan-out), check the hit rate and, if it passes, QA, transfer the
    results and publish them (``repository`` and ``catalogue`` default to ``work_dir``)."""
    t0 = time.perf_counter()
    paths = common.layout(work_dir)
    raw = transfer_raw.submit(master, work_dir).result()
    chunks = plan_chunks.submit(raw["master"], frames_per_chunk, spot_params,
                                paths["chunks"]).result()
    refs = analyse_chunk.map(master=unmapped(raw["master"]),
                             start=[c["start"] for c in chunks],
                             stop=[c["stop"] for c in chunks],
                             params=unmapped(spot_params), out_dir=unmapped(paths["chunks"]))
    check = check_threshold.submit(refs, threshold).result()
    print(f"hit rate {check['hit_rate']:.1%} ({check['n_hits']}/{check['n_frames']}), "
          f"threshold {threshold:.1%}: {'passed' if check['passed'] else 'below'}")
    summary = moved = published = None
    if check["passed"]:
        summary = qa.submit(refs, work_dir, title,
                            raw["truth"] if use_truth else None).result()
        moved = transfer_results.submit(work_dir).result()
        published = publish.submit(
            work_dir, raw["master"], repository=repository or str(Path(work_dir) / "repository"),
            catalogue=catalogue or str(Path(work_dir) / "catalogue.sqlite"), owner=owner,
            allowed_users=allowed_users, qa_summary=summary, params=spot_params,
            title=title).result()
    return common.result("prefect", raw=raw, n_chunks=len(chunks), check=check, qa=summary,
                         transfer=moved, published=published,
                         seconds=time.perf_counter() - t0)


def run_prefect(master: str, work_dir: str, *, endpoint_id: str, client: Client | None = None,
                **options) -> dict:
    """Run :func:`ssx_pipeline` with its tasks on ``endpoint_id``; returns the pipeline record
    (see :func:`fedcompute_ssx.flows.common.result`)."""
    runner = FederatedTaskRunner(endpoint_id, client=client)
    return ssx_pipeline.with_options(task_runner=runner)(master, work_dir, **options)
