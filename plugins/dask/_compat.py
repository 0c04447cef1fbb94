"""Every use of distributed's ``Cluster`` internals by ``FederatedCluster``, in one place.

``distributed.deploy.Cluster`` is the base class of cluster managers, but the hooks a manager
implements (start, close, logs, the HTML status) and the state it keeps (its Adaptive, its log,
its loop runner) are underscore names. ``ClusterHooks`` maps the hooks onto public-named
methods of the subclass; the functions below read and write that state. Each names what would
replace it; ``tests/plugins/dask/test_compat.py`` fails loudly when one of them changes shape.
"""

from __future__ import annotations

from typing import Any


class ClusterHooks:
    """The private hooks ``distributed.deploy.Cluster`` calls, forwarded to public-named
    methods of the subclass (``start_remote``, ``close_remote``, ``fetch_logs``,
    ``scaling_status_html``).

    Replaced by: none yet. Internal: ``Cluster._start`` (awaited by ``Cluster.__await__``),
    ``Cluster._close`` (by ``close``), ``Cluster._get_logs`` (by ``get_logs``) and
    ``Cluster._scaling_status`` (by ``_repr_html_`` and the widget).
    """

    async def _start(self) -> None:
        await self.start_remote()  # type: ignore[attr-defined]

    async def _close(self) -> None:
        await self.close_remote()  # type: ignore[attr-defined]

    async def _get_logs(self, cluster: bool = True, scheduler: bool = True,
                        workers: Any = True) -> Any:
        return await self.fetch_logs(cluster, scheduler, workers)  # type: ignore[attr-defined]

    def _scaling_status(self) -> str:
        return self.scaling_status_html()  # type: ignore[attr-defined]


def set_adaptive(cluster: Any, adaptive: Any) -> None:
    """Record ``adaptive`` as the cluster's Adaptive (None: manual scaling).

    Replaced by: none yet. Private: ``Cluster._adaptive``.
    """
    cluster._adaptive = adaptive


def manager_log(cluster: Any, message: str) -> None:
    """Add a line to the cluster manager's log (what ``get_logs()["Cluster"]`` shows).

    Replaced by: none yet. Private: ``Cluster._log``.
    """
    cluster._log(message)


def manager_log_lines(cluster: Any) -> list[str]:
    """The cluster manager's own log lines.

    Replaced by: ``Cluster.get_logs()["Cluster"]`` (outside the loop). Private:
    ``Cluster._cluster_manager_logs``.
    """
    return [line for _, line in cluster._cluster_manager_logs]


def start_loop(cluster: Any) -> None:
    """Start the event loop a synchronous cluster runs its coroutines on.

    Replaced by: none yet. Private: ``SyncMethodMixin``'s ``_loop_runner``.
    """
    cluster._loop_runner.start()


def stop_loop(cluster: Any) -> None:
    """Stop (release) that loop."""
    cluster._loop_runner.stop()
