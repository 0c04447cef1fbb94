"""A Prefect flow whose tasks run on a fedcompute endpoint.

The flow (and Prefect's task engine: states, retries, caching, logs) runs here; each task's
function body runs on the endpoint, which needs no access to the Prefect API. Run with the
stack up (``fedcompute dev`` in another shell) and::

    FEDCOMPUTE_ENDPOINT_ID=<endpoint id> .venv/bin/python examples/prefect_quickstart.py

Without ``PREFECT_API_URL`` Prefect starts a temporary local server for the run.
"""

from __future__ import annotations

import logging
import os
import platform
import random

from fedcompute.plugins.prefect import FederatedTaskRunner
from prefect import flow, get_run_logger, task, unmapped
from prefect.runtime import task_run


@task
def where_am_i() -> str:
    return f"{platform.node()} (pid {os.getpid()})"


@task(retries=3, retry_delay_seconds=1)
def measure(sample: int, noise: float) -> float:
    """A flaky instrument: every 10th sample fails at first; Prefect retries it, on the endpoint
    again (``prefect.runtime`` works inside the remote body)."""
    if sample % 10 == 3 and task_run.get_run_count() == 1:
        raise OSError(f"instrument glitch on sample {sample}")
    value = sample * 1.5 + random.uniform(-noise, noise)
    print(f"sample {sample}: {value:.2f}")                      # -> the task run's logs
    logging.getLogger("lab.instrument").info("calibrated %d", sample)  # -> logs too
    return value


@task
def summarize(values: list[float]) -> dict:
    get_run_logger().info("summarizing %d values", len(values))
    return {"n": len(values), "mean": sum(values) / len(values), "max": max(values)}


@flow(log_prints=True)
def experiment(n_samples: int = 50) -> dict:
    print("flow runs on", platform.node(), "- tasks run on", where_am_i.submit().result())
    values = measure.map(range(n_samples), noise=unmapped(0.5))
    summary = summarize.submit(values)   # futures as parameters: waits for all of them
    return summary.result()


if __name__ == "__main__":
    endpoint_id = os.environ["FEDCOMPUTE_ENDPOINT_ID"]
    runner = FederatedTaskRunner(endpoint_id)  # credentials: env or `fedcompute login`
    print(experiment.with_options(task_runner=runner)())
