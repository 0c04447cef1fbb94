"""The SSX pipeline with plain Dask on the endpoint's cluster: ``Client(FederatedCluster(...))``.

The compute — planning, the per-chunk analysis fan-out, the hit-rate check and QA — is a Dask
graph on the endpoint's scheduler, reached through the fedcompute service's relay: chunk
results stay in the workers' memory and move between workers, never through this process.
The steps that are not Dask jobs — staging the raw data, transferring the results and
publishing — run as fedcompute tasks through ``fedcompute.Executor`` on the same endpoint::

    from fedcompute_ssx.flows.dask_pipeline import run_dask
    run_dask("data/ssx_master.h5", "work", endpoint_id="...", owner="alice")
"""

from __future__ import annotations

import time
from pathlib import Path

from distributed import Client as DaskClient
from fedcompute import Client, Executor
from fedcompute.plugins.dask import FederatedCluster

from . import common


def run_dask(master: str, work_dir: str, *, endpoint_id: str, client: Client | None = None,
             frames_per_chunk: int = common.FRAMES_PER_CHUNK, spot_params: dict | None = None,
             threshold: float = common.THRESHOLD, repository: str | None = None,
             catalogue: str | None = None, owner: str = "beamline",
             allowed_users: list[str] | None = None, title: str | None = None,
             use_truth: bool = True) -> dict:
    """Transfer, analyse (Dask fan-out), check and, if the hit rate passes, QA, transfer the
    results and publish. Returns the pipeline record (see ``common.result``)."""
    t0 = time.perf_counter()
    fed = client or Client()
    with Executor(endpoint_id=endpoint_id, client=fed) as ex, \
            FederatedCluster(endpoint_id, client=fed) as cluster, DaskClient(cluster) as dask:
        raw = ex.submit(common.stage, master, work_dir).result()
        chunks = dask.submit(common.plan, raw["master"], frames_per_chunk, spot_params,
                             pure=False).result()
        # pure=False: the files behind the same arguments may change between runs.
        results = [dask.submit(common.analyse, **c, pure=False) for c in chunks]
        check = dask.submit(common.check, results, threshold, pure=False).result()
        summary = moved = published = None
        if check["passed"]:
            summary = dask.submit(common.run_qa, results, work_dir, title,
                                  raw["truth"] if use_truth else None, pure=False).result()
        del results  # release the chunk results on the workers
        if summary is not None:
            moved = ex.submit(common.move_results, work_dir).result()
            published = ex.submit(
                common.publish, work_dir, raw["master"],
                repository=repository or str(Path(work_dir) / "repository"),
                catalogue=catalogue or str(Path(work_dir) / "catalogue.sqlite"), owner=owner,
                allowed_users=allowed_users, qa_summary=summary, params=spot_params,
                title=title).result()
    return common.result("dask", raw=raw, n_chunks=len(chunks), check=check, qa=summary,
                         transfer=moved, published=published, seconds=time.perf_counter() - t0)
