"""``FederatedCluster``: a Dask cluster manager for an endpoint's scheduler, reached through the
fedcompute service (``Client(FederatedCluster(endpoint_id=...))``)."""

from __future__ import annotations

import asyncio
import logging
import platform
import uuid
import warnings
from contextlib import suppress
from typing import Any

import dask
from distributed.core import Status, rpc
from distributed.deploy import Cluster
from distributed.objects import SchedulerInfo
from distributed.security import Security
from distributed.utils import Log, Logs
from fedcompute import errors
from fedcompute.protocol import dashboard_path

from . import _compat
from .comm import fed_address

logger = logging.getLogger(__name__)


class VersionMismatchError(errors.VersionMismatchError, RuntimeError):
    """The client's Python/Dask/cloudpickle versions do not match the endpoint's (a
    ``fedcompute.VersionMismatchError``, so one ``except`` catches the SDK's and this)."""


class EndpointUnavailable(errors.FedComputeError, ConnectionError):
    """The endpoint has no Dask bridge connected to the service (offline or Dask disabled)."""


def local_versions() -> dict[str, str]:
    import cloudpickle
    import distributed

    return {"python": platform.python_version(), "dask": dask.__version__,
            "distributed": distributed.__version__, "cloudpickle": cloudpickle.__version__}


def _digits(version: str, n: int) -> str:
    return ".".join(version.split(".")[:n])


#: package -> how many leading version parts must agree (0: the whole version).
VERSION_RULES = {"python": 2, "dask": 0, "distributed": 0, "cloudpickle": 2}


def check_versions(remote: dict[str, str], local: dict[str, str] | None = None) -> list[str]:
    """Mismatches between ``local`` (default: this process) and ``remote`` versions."""
    local = local or local_versions()
    problems = []
    for name, parts in VERSION_RULES.items():
        mine, theirs = local.get(name), remote.get(name)
        if not mine or not theirs:
            continue
        if (mine != theirs) if parts == 0 else (_digits(mine, parts) != _digits(theirs, parts)):
            problems.append(f"  {name:<12} client {mine:<12} endpoint {theirs}")
    return problems


class RemoteAdaptive:
    """Handle for adaptive scaling running at the endpoint (``cluster.adapt(...)`` returns it)."""

    def __init__(self, cluster: FederatedCluster, options: dict):
        self.cluster = cluster
        self.options = options
        self.periodic_callback = True  # Dask's "is adaptivity on" flag of an Adaptive

    def stop(self) -> Any:
        """Turn adaptive scaling off at the endpoint (workers stay as they are)."""
        self.periodic_callback = None
        return self.cluster.sync(self.cluster._adapt_stop)

    def __repr__(self) -> str:
        return f"<RemoteAdaptive {self.options}>"


class FederatedCluster(_compat.ClusterHooks, Cluster):
    """The Dask cluster of a fedcompute endpoint, reached through the service's relay.

    ``endpoint_id``: the endpoint (yours or shared with you). ``client``: a
    ``fedcompute.Client`` to take the service URL and token from; else ``service_url`` and
    ``token`` (default: ``FEDCOMPUTE_SERVICE_URL``/``FEDCOMPUTE_TOKEN`` or ``fedcompute login``).

    The endpoint's cluster is shared (the endpoint also runs fedcompute tasks on it) and
    outlives this object: ``close()`` only drops this connection. With
    ``shutdown_on_close=True``, ``close()`` also undoes remote scaling: adaptivity off and the
    endpoint back to its configured worker count (like dask-gateway's ``shutdown_on_close``, but
    the endpoint's cluster itself is never shut down from here). ``scale``/``adapt`` run at the
    endpoint through its own cluster manager, so adaptivity keeps working after the client
    leaves. ``check_versions``: True raises ``VersionMismatchError`` when Python (major.minor),
    dask, distributed or cloudpickle (major.minor) differ from the endpoint's; "warn" warns;
    False skips. ``dashboard_link`` is the endpoint's Dask dashboard through the service (sign
    in to the console, or send the token as ``Authorization: Bearer``); empty when the
    endpoint keeps it off.
    Clients must not talk to workers directly (``direct_to_workers`` stays off).
    """

    def __init__(self, endpoint_id: str, client: Any = None, *, service_url: str | None = None,
                 token: str | None = None, asynchronous: bool = False, loop: Any = None,
                 shutdown_on_close: bool = False, check_versions: bool | str = True,
                 verify: bool | str = True, poll_interval: float = 2.0,
                 name: str | None = None):
        try:
            endpoint_id = str(uuid.UUID(str(endpoint_id)))
        except ValueError as exc:
            raise ValueError(f"invalid endpoint id {endpoint_id!r}: expected a UUID") from exc
        if dask.config.get("distributed.client.direct-to-workers", False):
            raise ValueError("distributed.client.direct-to-workers is on: a FederatedCluster's "
                             "workers are only reachable through the endpoint's scheduler; "
                             "turn it off")
        if client is None:
            from fedcompute import Client as FedClient

            client = FedClient(service_url, token, verify=verify)
        self.fed_client = client
        self.endpoint_id = endpoint_id
        self.shutdown_on_close = shutdown_on_close
        self.check_versions = check_versions
        self.poll_interval = poll_interval
        self.endpoint_info: dict = {}
        self.bridge_info: dict = {}
        self._address = fed_address(client.service_url, endpoint_id)
        # A callable, not the token: each comm (and each reconnect) takes a fresh one, so a
        # long session outlives a short-lived OpenID Connect access token.
        extra: dict[str, Any] = {"token": lambda: client.token}
        if self._address.startswith("feds://") and verify is not True:
            from ssl import CERT_NONE, create_default_context

            ctx = create_default_context(cafile=verify if isinstance(verify, str) else None)
            if verify is False:
                ctx.check_hostname, ctx.verify_mode = False, CERT_NONE
            extra["ssl_options"] = ctx
        #: Client(cluster) takes this, so every comm of the client carries the token.
        self.security = Security(extra_conn_args=extra)
        self._poll_task: asyncio.Task | None = None
        self._scheduler_id: str | None = None
        super().__init__(asynchronous=asynchronous, loop=loop, quiet=True,
                         name=name or f"fed-{endpoint_id[:8]}")
        if not self.called_from_running_loop:
            _compat.start_loop(self)
            try:
                self.sync(self.start_remote)
            except BaseException:
                _compat.stop_loop(self)
                raise

    # --- start / stop ------------------------------------------------------------------

    def __await__(self):
        async def _() -> FederatedCluster:
            if self.status == Status.created:
                await self.start_remote()
            return self

        return _().__await__()

    def _preflight(self) -> dict:
        """Ask the service whether we may use the endpoint and whether its bridge is up."""
        return self.fed_client.request("GET", f"/endpoints/{self.endpoint_id}/dask/info")

    async def start_remote(self) -> None:
        """Connect to the endpoint's scheduler through the service (``Cluster._start``)."""
        while self.status == Status.starting:
            await asyncio.sleep(0.01)
        if self.status != Status.created:
            return
        self.status = Status.starting
        try:
            info = await asyncio.to_thread(self._preflight)
            self.endpoint_info = info
            if not info.get("connected"):
                raise EndpointUnavailable(
                    f"endpoint {self.endpoint_id} has no Dask bridge connected to "
                    f"{self.fed_client.service_url}: it is offline or still starting")
            self._check_versions(info.get("versions") or {})
            self.scheduler_comm = rpc(self._address,
                                      connection_args=self.security.get_connection_args("client"))
            await self._refresh()
        except BaseException:
            self.status = Status.created
            if self.scheduler_comm is not None:
                await self.scheduler_comm.close_rpc()
                self.scheduler_comm = None
            raise
        # Not Cluster._start: its worker-status subscription would take the scheduler's single
        # "worker-status" plugin away from the endpoint's own cluster manager. Poll instead.
        self._poll_task = asyncio.ensure_future(self._poll())
        for pc in self.periodic_callbacks.values():
            pc.start()
        self.status = Status.running

    def _check_versions(self, remote: dict) -> None:
        if not self.check_versions:
            return
        if not remote:
            warnings.warn(f"endpoint {self.endpoint_id} did not report its versions", stacklevel=3)
            return
        problems = check_versions(remote)
        if not problems:
            return
        text = (f"this client and endpoint {self.endpoint_id} run different versions; Dask "
                "needs them to match:\n" + "\n".join(problems) + "\nInstall the endpoint's "
                "versions here (or update the endpoint), or pass check_versions=False to try "
                "anyway.")
        if self.check_versions == "warn":
            warnings.warn(text, stacklevel=3)
        else:
            raise VersionMismatchError(text)

    async def _refresh(self) -> None:
        identity = await self.scheduler_comm.identity(n_workers=-1)
        self.scheduler_info = SchedulerInfo(identity)
        self.bridge_info = await self.scheduler_comm.fedcompute_info()
        scheduler_id = identity.get("id")
        if self._scheduler_id and scheduler_id != self._scheduler_id:
            message = (f"endpoint {self.endpoint_id} restarted: its Dask scheduler is new, so "
                       "futures and data from before are gone; submit the work again")
            logger.warning(message)
            _compat.manager_log(self, message)
        self._scheduler_id = scheduler_id

    async def _poll(self) -> None:
        while self.status == Status.running:
            await asyncio.sleep(self.poll_interval)
            try:
                await self._refresh()
            except OSError as exc:
                logger.debug("cannot refresh %s: %s", self._address, exc)

    async def close_remote(self) -> None:
        """Drop the connection; undo remote scaling with ``shutdown_on_close`` (``_close``)."""
        if self.status == Status.closed:
            return
        was_running = self.status == Status.running
        self.status = Status.closing
        if self._poll_task is not None:
            self._poll_task.cancel()
            with suppress(asyncio.CancelledError):
                await self._poll_task
        if self.shutdown_on_close and was_running:
            try:
                await self.scheduler_comm.fedcompute_reset()
            except OSError as exc:
                logger.warning("could not reset endpoint %s's scaling: %s", self.endpoint_id, exc)
        if self.scheduler_comm is not None:
            await self.scheduler_comm.close_rpc()
        for pc in self.periodic_callbacks.values():
            pc.stop()
        self.status = Status.closed

    def close(self, timeout: float | None = None) -> Any:
        """Drop this connection; the endpoint's cluster keeps running (see the class doc)."""
        result = super().close(timeout)
        if not self.asynchronous:
            _compat.stop_loop(self)
        return result

    # --- scaling (at the endpoint) -----------------------------------------------------

    def scale(self, n: int = 0, memory: str | None = None, cores: int | None = None) -> Any:
        """Ask the endpoint for ``n`` workers (or enough for ``memory``/``cores``); turns off
        adaptive scaling. The endpoint may cap the number."""
        _compat.set_adaptive(self, None)
        return self.sync(self._scale, n, memory, cores)

    async def _scale(self, n: int, memory: str | None, cores: int | None) -> dict:
        return await self.scheduler_comm.fedcompute_scale(n=n, memory=memory, cores=cores)

    def adapt(self, Adaptive: Any = None, **kwargs: Any) -> Any:  # noqa: N803 - Dask's name
        """Adaptive scaling run by the endpoint's cluster manager (``minimum``, ``maximum``,
        ``interval``, ``wait_count``, ``target_duration``, ``minimum_/maximum_cores``/``memory``).
        Keeps running after this client disconnects; returns a handle with ``stop()``."""
        if Adaptive is not None:
            raise TypeError("FederatedCluster adapts at the endpoint; a custom Adaptive class "
                            "cannot be used")
        return self.sync(self._adapt, kwargs)

    async def _adapt(self, options: dict) -> RemoteAdaptive:
        reply = await self.scheduler_comm.fedcompute_adapt(**options)
        adaptive = RemoteAdaptive(self, reply.get("options", options))
        _compat.set_adaptive(self, adaptive)
        return adaptive

    async def _adapt_stop(self) -> None:
        await self.scheduler_comm.fedcompute_adapt_stop()

    def scaling_status_html(self) -> str:
        """The "Scaling mode / Workers" table of the cluster's HTML view."""
        mode = "Adaptive" if self.bridge_info.get("adaptive") else "Manual"
        workers = len(self.scheduler_info["workers"])
        requested = self.bridge_info.get("requested_workers", workers)
        count = workers if workers == requested else f"{workers} / {requested}"
        return (f'<table><tr><td style="text-align: left;">Scaling mode: {mode}</td></tr>'
                f'<tr><td style="text-align: left;">Workers: {count}</td></tr></table>')

    # --- logs, links ---------------------------------------------------------------------

    async def fetch_logs(self, cluster: bool = True, scheduler: bool = True,
                         workers: Any = True) -> Logs:
        """The endpoint's cluster-manager, scheduler and worker logs (``get_logs``)."""
        logs = Logs()
        if cluster:
            lines = await self.scheduler_comm.fedcompute_cluster_logs()
            local = _compat.manager_log_lines(self)
            logs["Cluster"] = Log("\n".join(list(lines) + local))
        if scheduler:
            lines = await self.scheduler_comm.get_logs()
            logs["Scheduler"] = Log("\n".join(line for _, line in lines))
        if workers:
            found = await self.scheduler_comm.worker_logs(
                workers=None if workers is True else workers)
            for address, lines in found.items():
                logs[address] = Log("\n".join(line for _, line in lines))
        return logs

    @property
    def dashboard_link(self) -> str:
        """The endpoint's Dask dashboard, relayed by the service; "" if the endpoint has none."""
        if not self.endpoint_info.get("dashboard"):
            return ""
        path = self.endpoint_info.get("dashboard_path") or dashboard_path(self.endpoint_id)
        return f"{self.fed_client.service_url.rstrip('/')}{path}/status"

    @property
    def scheduler_address(self) -> str:
        return self._address

    def get_client(self) -> Any:
        """The current client of this cluster, or a new one (never direct to workers)."""
        from distributed import Client

        with suppress(ValueError):
            current = Client.current()
            if current is not None and current.cluster == self:
                return current
        return Client(self, direct_to_workers=False)

    def __repr__(self) -> str:
        workers = self.scheduler_info.get("workers", {})
        threads = sum(w.get("nthreads", 0) for w in workers.values())
        return (f"FederatedCluster({self.name!r}, {self._address!r}, workers={len(workers)}, "
                f"threads={threads})")
