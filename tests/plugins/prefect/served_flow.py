"""A flow served the way users serve one (``python served_flow.py``: ``Flow.serve``), whose task
body runs on a fedcompute endpoint (``FC_TEST_ENDPOINT``); the flow-run cancellation test
cancels its runs through the Prefect API. The body leaves marks in ``folder``: ``started``, then
``stopped`` (with the exception that stopped it) or ``finished``."""

from __future__ import annotations

import os

from fedcompute.plugins.prefect import FederatedTaskRunner
from prefect import flow, task


@task
def long_body(folder: str, seconds: float = 120) -> str:
    import os
    import time

    open(os.path.join(folder, "started"), "w").close()
    try:
        for _ in range(int(seconds * 10)):
            time.sleep(0.1)
    except BaseException as exc:
        with open(os.path.join(folder, "stopped"), "w") as f:
            f.write(type(exc).__name__)
        raise
    open(os.path.join(folder, "finished"), "w").close()
    return "finished"


@flow(task_runner=FederatedTaskRunner(os.environ.get("FC_TEST_ENDPOINT") or "unset"))
def cancellable(folder: str) -> str:
    return long_body.submit(folder).result()


if __name__ == "__main__":
    cancellable.serve(name="fc-cancel", limit=1)
