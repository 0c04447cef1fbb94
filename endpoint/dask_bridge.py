"""The endpoint side of ``Client(FederatedCluster(...))``: dial out, hand sockets to the scheduler.

The bridge keeps one outbound control websocket to the service (``/v1/agent/control``). When a
user opens a ``fed://`` comm, the service sends ``{"op": "dial", "comm_id": ...}``; the bridge
opens a new outbound websocket (``/v1/agent/dask/<comm_id>``), wraps it as distributed's ``WS``
comm, runs the listener side of Dask's handshake and gives it to ``scheduler.handle_comm`` — as
if it had arrived on a listener. Nothing listens at the endpoint (distributed's ``WSListener``
would bind every interface whatever host it is given, so none is opened).

Everything runs on the scheduler's event loop (the engine's cluster runs its Scheduler
in-process), so comms are born where the scheduler reads them.

The bridge also adds scheduler handlers the ``FederatedCluster`` calls over the relayed comm:
``fedcompute_info``, ``fedcompute_scale``, ``fedcompute_adapt``, ``fedcompute_adapt_stop``,
``fedcompute_reset`` and ``fedcompute_cluster_logs``. Scaling and adaptivity are carried out by
the engine's own cluster manager here, so they work with dask-jobqueue engines and keep going
after the user's laptop disconnects. The bridge never subscribes to the scheduler's single
``worker-status`` plugin (that would steal it from the engine's cluster manager, breaking its
adaptive scaling).

With ``dashboard`` (the path the service shows it under, which the scheduler serves its HTTP
routes beneath), a dial for the dashboard joins the new websocket byte for byte to the
scheduler's HTTP server on loopback: the service forwards one browser request (or one
dashboard websocket) through it. Dask's Bokeh dashboard is added to the scheduler on the first
such dial unless the engine started it.

It also installs :class:`ResourcesGuard`, a scheduler plugin that errs at once a task whose
resource restrictions no current worker, and no worker the engine would add, can meet (Dask
would leave it waiting silently for ever).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import logging
import math
import struct
import threading
import time
import uuid
from collections import deque
from concurrent.futures import Future
from contextlib import suppress
from typing import Any
from urllib.parse import urlsplit

from distributed.comm.core import CommClosedError
from distributed.comm.ws import MAX_MESSAGE_SIZE, WS
from fedcompute.tls import ssl_context
from fedcompute.versions import versions
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpclient import TCPClient
from tornado.websocket import WebSocketClosedError, WebSocketError, websocket_connect

from . import _compat
from .resources_guard import ResourcesGuard

log = logging.getLogger(__name__)

#: Keyword arguments of ``Cluster.adapt`` a remote user may set.
ADAPT_OPTIONS = {"minimum", "maximum", "minimum_cores", "maximum_cores", "minimum_memory",
                 "maximum_memory", "interval", "wait_count", "target_duration"}
HANDLERS = ("fedcompute_info", "fedcompute_scale", "fedcompute_adapt", "fedcompute_adapt_stop",
            "fedcompute_reset", "fedcompute_cluster_logs")


def dask_versions() -> dict[str, str]:
    """The versions a Dask client must agree with: Python, dask, distributed, cloudpickle."""
    return versions("dask", "distributed", "cloudpickle")


class RelayedComm(WS):
    """An outbound websocket the scheduler treats as an incoming comm."""

    @property
    def same_host(self) -> bool:
        return False

    async def read(self, deserializers: Any = None) -> Any:
        try:
            return await super().read(deserializers)
        except (TypeError, struct.error) as exc:  # connection lost between frames
            if self.closed() or self.sock.close_code is not None:
                raise CommClosedError(f"{self}: connection closed mid-message") from exc
            raise


class DaskBridge:
    """Gives users of the service Dask access to ``engine.cluster``'s scheduler.

    ``service_url``/``credential``/``endpoint_id``: how the endpoint authenticates to the service.
    ``engine``: has ``.cluster`` (a distributed Cluster whose Scheduler runs in this process).
    ``max_workers``: a cap on what remote ``scale``/``adapt`` may ask for (None: no cap).
    ``verify``: TLS verification for ``https`` services (True, False or a CA bundle path).
    ``dashboard``: the scheduler's ``http_prefix`` when the service may show its dashboard
    (empty: no dashboard).
    """

    def __init__(self, service_url: str, credential: str, endpoint_id: str, engine: Any, *,
                 max_workers: int | None = None, verify: bool | str = True,
                 ping_interval: float = 20.0, dial_timeout: float = 30.0,
                 dashboard: str = ""):
        parts = urlsplit(service_url.rstrip("/"))
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"invalid service URL {service_url!r}")
        ws_scheme = "wss" if parts.scheme == "https" else "ws"
        self._base = f"{ws_scheme}://{parts.netloc}{parts.path}"
        self._headers = {"Authorization": f"Bearer {credential}"}
        self.endpoint_id = endpoint_id
        self.engine = engine
        self.max_workers = max_workers
        self._ssl = ssl_context(verify) if ws_scheme == "wss" else None
        self.ping_interval = ping_interval
        self.dial_timeout = dial_timeout
        if dashboard and importlib.util.find_spec("bokeh") is None:
            log.warning("no Dask dashboard: bokeh is not installed at the endpoint")
            dashboard = ""
        self.dashboard = dashboard
        self.dashboard_requests = 0
        self._bokeh: asyncio.Future | None = None
        self.session = uuid.uuid4().hex
        self.versions = dask_versions()
        self.connected = threading.Event()
        self.comms_served = 0
        self._logs: deque[tuple[float, str]] = deque(maxlen=1000)
        self._scheduler: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: Future | None = None
        self._control: Any = None
        self._comms: set[RelayedComm] = set()
        self._stopping = False
        self._initial_workers: int | None = None
        self._initial_adaptive: tuple[type, dict] | None = None
        self._remote_adaptive = False
        self._guard: ResourcesGuard | None = None

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> DaskBridge:
        """Start dialing the service (returns at once; the bridge runs on the scheduler's loop)."""
        cluster = self.engine.cluster
        scheduler = getattr(cluster, "scheduler", None)
        if scheduler is None or not hasattr(scheduler, "handle_comm"):
            raise RuntimeError(f"{type(cluster).__name__} does not run its Dask scheduler in this "
                               "process; the Dask bridge needs an in-process scheduler")
        self._scheduler = scheduler
        self._loop = scheduler.loop.asyncio_loop
        self._remember_engine_scaling()
        self._stopping = False
        for name in HANDLERS:
            scheduler.handlers[name] = getattr(self, "_h_" + name.removeprefix("fedcompute_"))
        self._guard = ResourcesGuard(self.engine)
        asyncio.run_coroutine_threadsafe(self._guard.install(scheduler), self._loop).result(30)
        self._runner = asyncio.run_coroutine_threadsafe(self._run(), self._loop)
        self._log(f"Dask bridge started (session {self.session[:8]})")
        return self

    def wait_connected(self, timeout: float = 30.0) -> bool:
        """Block until the control connection is up (True) or ``timeout`` passes (False)."""
        return self.connected.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Close the control connection and every relayed comm; remove the handlers."""
        if self._loop is None:
            return
        self._stopping = True
        if not self._loop.is_closed():
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout)
            except Exception as exc:  # noqa: BLE001 - the loop may be stopping with the engine
                log.debug("dask bridge shutdown: %s", exc)
        if self._runner is not None:
            self._runner.cancel()
        for name in HANDLERS:
            self._scheduler.handlers.pop(name, None)
        if self._guard is not None and not self._loop.is_closed():
            with suppress(Exception):
                self._loop.call_soon_threadsafe(self._guard.uninstall, self._scheduler)
        self.connected.clear()
        self._loop = None

    async def _shutdown(self) -> None:
        if self._control is not None:
            self._control.close(1000, "endpoint stopping")
        for comm in list(self._comms):
            comm.abort()
        self._comms.clear()

    # --- control connection ------------------------------------------------------------

    def _request(self, path: str, timeout: float) -> HTTPRequest:
        kwargs: dict[str, Any] = {"headers": dict(self._headers), "connect_timeout": timeout,
                                  "request_timeout": timeout}
        if self._ssl is not None:
            kwargs["ssl_options"] = self._ssl
        return HTTPRequest(self._base + path, **kwargs)

    async def _run(self) -> None:
        delay = 0.5
        while not self._stopping:
            try:
                ws = await websocket_connect(self._request("/v1/agent/control", 30.0),
                                             ping_interval=self.ping_interval,
                                             ping_timeout=self.ping_interval)
                ws.protocol.set_nodelay(True)
                self._control = ws
                await ws.write_message(json.dumps({"op": "hello", "session": self.session,
                                                   "versions": self.versions,
                                                   "dashboard": self.dashboard}))
                while True:
                    raw = await ws.read_message()
                    if raw is None:
                        break
                    msg = json.loads(raw) if isinstance(raw, str) else {}
                    if msg.get("op") == "welcome":
                        self.connected.set()
                        delay = 0.5
                        self._log("control connection to the service is up")
                    elif msg.get("op") == "dial" and msg.get("target") == "dashboard":
                        asyncio.ensure_future(self._dial_dashboard(str(msg["comm_id"])))
                    elif msg.get("op") == "dial":
                        asyncio.ensure_future(self._dial(str(msg["comm_id"])))
                reason = f"{ws.close_code} {ws.close_reason or ''}".strip()
                self._log(f"control connection closed ({reason})", logging.INFO)
            except asyncio.CancelledError:
                raise
            except HTTPClientError as exc:
                level = logging.ERROR if exc.code in (401, 403, 404) else logging.WARNING
                self._log(f"service refused the Dask control connection: HTTP {exc.code} "
                          f"{_message(exc)}", level)
                if exc.code in (401, 403, 404):
                    delay = 30.0  # credential revoked or endpoint deleted: retry slowly
            except (OSError, StreamClosedError, WebSocketError, ValueError) as exc:
                self._log(f"control connection failed: {exc}", logging.INFO)
            finally:
                self.connected.clear()
                self._control = None
            if self._stopping:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _dial(self, comm_id: str) -> None:
        """Open the websocket for ``comm_id`` and give it to the scheduler as a new comm."""
        try:
            sock = await websocket_connect(self._request(f"/v1/agent/dask/{comm_id}",
                                                         self.dial_timeout),
                                           max_message_size=MAX_MESSAGE_SIZE)
            sock.protocol.set_nodelay(True)
            comm = RelayedComm(sock, deserialize=self._scheduler.deserialize,
                               allow_offload=False)
            await asyncio.wait_for(_compat.listener_handshake(comm), self.dial_timeout)
        except (TimeoutError, OSError, StreamClosedError, WebSocketError, WebSocketClosedError, HTTPClientError, CommClosedError) as exc:
            self._log(f"dial {comm_id[:8]} failed: {exc}", logging.INFO)
            return
        if self._stopping:
            comm.abort()
            return
        self.comms_served += 1
        self._comms.add(comm)
        self._scheduler.handle_comm(comm)
        asyncio.ensure_future(self._forget_when_closed(comm))

    # --- the dashboard -----------------------------------------------------------------

    async def _dial_dashboard(self, comm_id: str) -> None:
        """Open the websocket for ``comm_id`` and join it to the scheduler's HTTP server."""
        if not self.dashboard or self._stopping:
            return  # the service asks only bridges that said they have one
        try:
            sock = await websocket_connect(self._request(f"/v1/agent/dask/{comm_id}",
                                                         self.dial_timeout),
                                           max_message_size=MAX_MESSAGE_SIZE)
        except (TimeoutError, OSError, StreamClosedError, WebSocketError, HTTPClientError) as exc:
            self._log(f"dashboard dial {comm_id[:8]} failed: {exc}", logging.INFO)
            return
        try:
            await self._bokeh_started()
            stream = await TCPClient().connect(*self._http_address(),
                                               timeout=self.dial_timeout)
        except Exception as exc:  # noqa: BLE001 - the browser gets the reason, not a hang
            self._log(f"dashboard not available: {exc!r}", logging.WARNING)
            with suppress(WebSocketClosedError, StreamClosedError):
                await sock.write_message(_http_error(
                    f"the endpoint's Dask dashboard is not available: {exc!r}"), binary=True)
            sock.close(1000, "")
            return
        self.dashboard_requests += 1
        await _join(sock, stream)

    def _http_address(self) -> tuple[str, int]:
        server = self._scheduler.http_server
        if server is None:
            raise RuntimeError("the scheduler serves no HTTP")
        for listening in getattr(server, "_sockets", {}).values():
            host, port = listening.getsockname()[:2]
            return ("127.0.0.1" if host in ("0.0.0.0", "") else
                    "::1" if host == "::" else host), port
        return "127.0.0.1", server.port

    async def _bokeh_started(self) -> None:
        """Add Dask's Bokeh dashboard to the scheduler once (unless the engine started it):
        importing Bokeh takes a second, so endpoints nobody looks at never pay for it."""
        if self._bokeh is None:
            self._bokeh = asyncio.ensure_future(self._start_bokeh())
        await asyncio.shield(self._bokeh)

    async def _start_bokeh(self) -> None:
        application = self._scheduler.http_application
        if any(type(app).__name__ == "DaskBokehTornado"
               for app in getattr(application, "applications", ())):
            return
        # Imported off the loop: the scheduler keeps serving meanwhile.
        module = await asyncio.to_thread(importlib.import_module,
                                         "distributed.dashboard.scheduler")
        module.connect(application, self._scheduler.http_server, self._scheduler,
                       prefix=self.dashboard)
        self._log(f"Dask dashboard started under {self.dashboard}", logging.INFO)

    async def _forget_when_closed(self, comm: RelayedComm) -> None:
        while not comm.closed():
            await asyncio.sleep(5)
        self._comms.discard(comm)

    def _log(self, text: str, level: int = logging.DEBUG) -> None:
        self._logs.append((time.time(), text))
        log.log(level, "dask bridge: %s", text)

    # --- scheduler handlers (run on the scheduler's loop) ----------------------------------

    def _requested_workers(self) -> int:
        cluster = self.engine.cluster
        spec = getattr(cluster, "worker_spec", None)
        if spec is not None:
            return sum(len(s.get("group", ())) or 1 for s in spec.values())
        return len(self._scheduler.workers)

    def _adaptive(self) -> Any:
        return _compat.cluster_adaptive(self.engine.cluster)

    def _cap(self, n: float) -> float:
        if self.max_workers is not None and n > self.max_workers:
            return self.max_workers
        return n

    def _remember_engine_scaling(self) -> None:
        """What reset() goes back to: the engine's own Adaptive (class and options: batch
        engines pass extra ones), or its worker count."""
        cluster = self.engine.cluster
        self._initial_workers = self._requested_workers()
        adaptive = self._adaptive()
        self._initial_adaptive = None
        if adaptive is not None:
            self._initial_adaptive = (type(adaptive), _compat.adaptive_options(cluster))

    def _h_info(self) -> dict:
        return {"endpoint_id": self.endpoint_id, "versions": self.versions,
                "cluster": type(self.engine.cluster).__name__,
                "requested_workers": self._requested_workers(),
                "initial_workers": self._initial_workers, "max_workers": self.max_workers,
                "endpoint_adaptive": self._initial_adaptive is not None,
                "adaptive": self._adaptive() is not None,
                "remote_adaptive": self._remote_adaptive and self._adaptive() is not None,
                "session": self.session}

    def _stop_adaptive(self) -> None:
        _compat.stop_adaptive(self.engine.cluster)
        self._remote_adaptive = False

    def _start_adaptive(self, options: dict) -> dict:
        """(Re)start adaptivity with the engine's Adaptive class and options plus ``options``."""
        cluster = self.engine.cluster
        for key in ("minimum", "maximum"):
            if key in options and not math.isinf(float(options[key])):
                options[key] = int(options[key])  # Adaptive wants int or inf
        if self.max_workers is not None:
            options["maximum"] = min(options.get("maximum", math.inf), self.max_workers)
        self._stop_adaptive()
        kwargs: dict[str, Any] = {}
        if self._initial_adaptive is not None:
            # Start from the engine's class and options: a batch engine's Adaptive takes extra
            # arguments (e.g. the engine itself).
            cls, engine_options = self._initial_adaptive
            kwargs = {"Adaptive": cls, **engine_options}
        # Cluster.adapt merges into earlier calls' options: no leftovers from those.
        _compat.readapt(cluster, **{**kwargs, **options})
        self._remote_adaptive = True
        return options

    def _h_scale(self, n: int | None = None, memory: str | None = None,
                 cores: int | None = None) -> dict:
        """Scale to ``n`` workers (or enough for ``memory``/``cores``); stops adaptivity.

        On an endpoint that scales adaptively by itself (batch engines), ``n`` becomes the
        minimum instead: its own scaling for fedcompute tasks keeps working."""
        cluster = self.engine.cluster
        if self._initial_adaptive is not None:
            if memory is not None or cores is not None:
                raise ValueError("this endpoint scales adaptively: scale it by workers (n)")
            n = int(self._cap(max(0, int(n or 0))))
            ceiling = self._initial_adaptive[1].get("maximum", math.inf)
            self._start_adaptive({"minimum": n, "maximum": max(n, ceiling)})
            self._log(f"remote scale: at least {n} workers (adaptive endpoint)", logging.INFO)
            return {"requested_workers": self._requested_workers(), "minimum": n}
        self._stop_adaptive()
        if memory is None and cores is None:
            cluster.scale(int(self._cap(max(0, int(n or 0)))))
        else:
            cluster.scale(int(self._cap(int(n or 0))), memory=memory, cores=cores)
            if self.max_workers is not None and self._requested_workers() > self.max_workers:
                cluster.scale(self.max_workers)
        self._log(f"remote scale to {self._requested_workers()} workers", logging.INFO)
        return {"requested_workers": self._requested_workers()}

    def _h_adapt(self, **options: Any) -> dict:
        """Adaptive scaling by the engine's cluster manager, within the user's bounds."""
        unknown = set(options) - ADAPT_OPTIONS
        if unknown:
            raise ValueError(f"unsupported adapt option(s) {sorted(unknown)}; "
                             f"use {sorted(ADAPT_OPTIONS)}")
        options = self._start_adaptive(dict(options))
        self._log(f"remote adapt {options}", logging.INFO)
        return {"adaptive": True, "options": {k: v for k, v in options.items()
                                              if not (isinstance(v, float) and math.isinf(v))}}

    def _h_adapt_stop(self) -> dict:
        self._stop_adaptive()
        return {"adaptive": False}

    def _h_reset(self) -> dict:
        """Undo remote scaling: back to the engine's own adaptivity or worker count."""
        self._stop_adaptive()
        if self._initial_adaptive is not None:
            cls, engine_options = self._initial_adaptive
            _compat.readapt(self.engine.cluster, Adaptive=cls, **engine_options)
        elif self._initial_workers is not None:
            self.engine.cluster.scale(self._initial_workers)
        self._remote_adaptive = False
        self._log("remote reset to the endpoint's configured scaling", logging.INFO)
        return {"requested_workers": self._requested_workers()}

    def _h_cluster_logs(self) -> list[str]:
        """The engine's cluster-manager log, then the bridge's own."""
        lines = [f"{stamp:%Y-%m-%d %H:%M:%S} {text}" for stamp, text in
                 _compat.cluster_manager_logs(self.engine.cluster)]
        lines += [f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(t))} dask bridge: {text}"
                  for t, text in self._logs]
        return lines


def _http_error(text: str) -> bytes:
    body = text.encode()
    return (b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body)) + body


async def _join(sock: Any, stream: IOStream) -> None:
    """Copy bytes both ways between a websocket (binary messages) and a TCP stream, until
    either ends; then close both."""

    async def to_stream() -> None:
        while True:
            data = await sock.read_message()
            if data is None:
                return
            await stream.write(data if isinstance(data, bytes) else data.encode())

    async def to_socket() -> None:
        while True:
            data = await stream.read_bytes(256 * 1024, partial=True)
            await sock.write_message(data, binary=True)

    tasks = [asyncio.ensure_future(to_stream()), asyncio.ensure_future(to_socket())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        with suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)
        stream.close()
        sock.close(1000, "")


def _message(exc: HTTPClientError) -> str:
    body = getattr(exc.response, "body", b"") or b""
    with suppress(ValueError, KeyError, TypeError):
        return str(json.loads(body)["message"])
    return exc.message or ""
