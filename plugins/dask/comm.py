"""The ``fed://`` and ``feds://`` Dask comm backend: a websocket to the fedcompute service's relay.

An address names the service and the endpoint: ``fed://host:port/<endpoint_id>`` (plain
websocket) or ``feds://host[:port][/prefix]/<endpoint_id>`` (TLS). Connecting opens
``ws(s)://host:port[/prefix]/v1/endpoints/<endpoint_id>/dask`` with the user's bearer token; the
service asks the endpoint to dial out a matching websocket and relays messages between the two,
so the user's ``distributed.Client`` speaks the ordinary Dask protocol to the endpoint's
scheduler. The backend is client-only: nothing listens on a ``fed://`` address.

Registered through the ``distributed.comm.backends`` entry point, so ``Client("fed://...")``
works once ``fedcompute[dask]`` is installed. The token comes from the connection's
``extra_conn_args``: ``"token"``, a callable asked for a fresh token at every connect
(``FederatedCluster`` sets it through its ``security``, so reconnects outlive short-lived
OpenID Connect access tokens), or ``"headers"``; else from ``FEDCOMPUTE_TOKEN`` or the
``fedcompute login`` file when that names the same service (an OIDC login is refreshed).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import struct
from typing import Any
from urllib.parse import urlsplit

from distributed.comm.core import CommClosedError, Connector, FatalCommClosedError
from distributed.comm.registry import Backend
from distributed.comm.utils import from_frames
from distributed.comm.ws import MAX_MESSAGE_SIZE, WS
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClosedError, WebSocketError, websocket_connect

logger = logging.getLogger(__name__)

API_PATH = "/v1/endpoints/{endpoint_id}/dask"
#: HTTP statuses that retrying cannot fix: fail the connect at once, with the service's message.
FATAL_STATUSES = {400, 401, 403, 404}


def parse_fed_address(loc: str) -> tuple[str, str]:
    """``"host:port[/prefix]/<endpoint_id>"`` -> ``("host:port[/prefix]", endpoint_id)``."""
    base, _, endpoint_id = loc.rstrip("/").rpartition("/")
    if not base or not endpoint_id:
        raise ValueError(f"invalid fed:// address {loc!r}: expected host:port/<endpoint_id>")
    return base, endpoint_id


def fed_address(service_url: str, endpoint_id: str) -> str:
    """The Dask address of an endpoint behind ``service_url`` (``http`` -> ``fed``, ``https`` ->
    ``feds``)."""
    parts = urlsplit(service_url.rstrip("/"))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"invalid service URL {service_url!r}: expected http(s)://host[:port]")
    scheme = "feds" if parts.scheme == "https" else "fed"
    return f"{scheme}://{parts.netloc}{parts.path}/{endpoint_id}"


def _saved_token(service_base: str, secure: bool) -> str | None:
    """A token from the environment or the login file, only for the service it was issued by."""
    try:
        from fedcompute.config import credentials_path
    except ImportError:  # pragma: no cover - fedcompute core is a dependency
        return None
    url = f"{'https' if secure else 'http'}://{service_base}".rstrip("/")
    env_url = (os.environ.get("FEDCOMPUTE_SERVICE_URL") or "").rstrip("/")
    if os.environ.get("FEDCOMPUTE_TOKEN") and env_url in ("", url):
        return os.environ["FEDCOMPUTE_TOKEN"]
    path = credentials_path()
    if path.exists():
        saved = json.loads(path.read_text())
        if (saved.get("service_url") or "").rstrip("/") == url:
            if isinstance(saved.get("oauth"), dict):
                from fedcompute.config import FileTokenStore
                from fedcompute.oauth import OAuthSession, RefreshingAuth

                auth = RefreshingAuth(OAuthSession.from_dict(saved["oauth"]),
                                      FileTokenStore(url))
                return auth.token()
            return saved.get("token")
    return None


def set_nodelay(sock: Any) -> None:
    """Tornado's websocket client leaves Nagle on: ~40-100 ms stalls on request/reply traffic."""
    try:
        sock.protocol.set_nodelay(True)
    except (AttributeError, OSError):  # pragma: no cover - closed already
        pass


class RelayComm(WS):
    """distributed's websocket comm, with clear errors when the relay closes the connection.

    The relay closes with a reason (``endpoint ... stopped or restarted``); it is put into the
    ``CommClosedError`` the Dask client logs. A connection lost between the frames of one
    message is a ``CommClosedError`` too, not a ``TypeError``.
    """

    def __init__(self, sock: Any, address: str, deserialize: bool = True,
                 allow_offload: bool = True):
        super().__init__(sock, deserialize=deserialize, allow_offload=allow_offload)
        if address:
            self._local_addr = self._peer_addr = address

    def _closed_error(self, cause: object = None) -> CommClosedError:
        reason = getattr(self.sock, "close_reason", None)
        code = getattr(self.sock, "close_code", None)
        text = f"{self._peer_addr}: connection closed"
        if code or reason:
            text += f" ({code}{': ' + reason if reason else ''})"
        if cause:
            text += f": {cause}"
        return CommClosedError(text)

    async def read(self, deserializers: Any = None) -> Any:
        try:
            n_frames = await self.sock.read_message()
            if n_frames is None:
                self.abort()
                raise self._closed_error()
            n_frames = struct.unpack("Q", n_frames)[0]
            frames = []
            for _ in range(n_frames):
                frame = await self.sock.read_message()
                if frame is None:
                    self.abort()
                    raise self._closed_error("in the middle of a message")
                frames.append(frame)
        except WebSocketClosedError as exc:
            raise self._closed_error(exc) from exc
        return await from_frames(frames, deserialize=self.deserialize,
                                 deserializers=deserializers, allow_offload=self.allow_offload)

    @property
    def local_address(self) -> str:
        return self._local_addr

    @property
    def peer_address(self) -> str:
        return self._peer_addr

    @property
    def same_host(self) -> bool:
        # The scheduler is behind a relay, on another machine as far as we know.
        return False


class FedConnector(Connector):
    """Opens a relayed websocket to an endpoint's Dask scheduler."""

    prefix = "fed://"
    ws_scheme = "ws"

    async def connect(self, address: str, deserialize: bool = True,
                      **connection_args: Any) -> RelayComm:
        base, endpoint_id = parse_fed_address(address)
        secure = self.ws_scheme == "wss"
        kwargs = dict(connection_args.get("extra_conn_args") or {})
        headers = dict(kwargs.pop("headers", None) or {})
        source = kwargs.pop("token", None)
        if source is not None:
            # Asked at every connect: a refresh (an HTTP call) must not stall the event loop.
            token = await asyncio.get_running_loop().run_in_executor(None, source) \
                if callable(source) else source
            headers["Authorization"] = f"Bearer {token}"
        if not any(k.lower() == "authorization" for k in headers):
            token = await asyncio.get_running_loop().run_in_executor(
                None, _saved_token, base, secure)
            if not token:
                raise FatalCommClosedError(
                    f"{self.prefix}{address}: no fedcompute token; use FederatedCluster(...) or set "
                    "FEDCOMPUTE_TOKEN (or `fedcompute login`) for this service")
            headers["Authorization"] = f"Bearer {token}"
        headers.setdefault("Accept", "application/json")
        if secure and connection_args.get("ssl_context") is not None:
            kwargs.setdefault("ssl_options", connection_args["ssl_context"])
        url = f"{self.ws_scheme}://{base}{API_PATH.format(endpoint_id=endpoint_id)}"
        try:
            sock = await websocket_connect(HTTPRequest(url, headers=headers, **kwargs),
                                           max_message_size=MAX_MESSAGE_SIZE)
        except HTTPClientError as exc:
            message = _error_message(exc)
            text = f"{self.prefix}{address}: HTTP {exc.code}: {message}"
            if exc.code in FATAL_STATUSES:
                raise FatalCommClosedError(text) from exc
            raise CommClosedError(text) from exc
        except ssl.SSLError as exc:  # a bad certificate does not get better by retrying
            raise FatalCommClosedError(f"{self.prefix}{address}: TLS: {exc}") from exc
        except (StreamClosedError, WebSocketError, OSError) as exc:
            raise CommClosedError(f"{self.prefix}{address}: cannot reach the service: "
                                  f"{exc}") from exc
        set_nodelay(sock)
        return RelayComm(sock, f"{self.prefix}{address}", deserialize=deserialize)


class FedsConnector(FedConnector):
    prefix = "feds://"
    ws_scheme = "wss"


def _error_message(exc: HTTPClientError) -> str:
    """The service's ``{"message": ...}`` if the error response has one."""
    body = getattr(exc.response, "body", b"") or b""
    try:
        return str(json.loads(body)["message"])
    except (ValueError, KeyError, TypeError):
        return exc.message or "error"


class FedBackend(Backend):
    """``fed://``: Dask over the fedcompute relay (client side only)."""

    _connector_class: type[FedConnector] = FedConnector

    def get_connector(self) -> FedConnector:
        return self._connector_class()

    def get_listener(self, loc: str, handle_comm: Any, deserialize: bool,
                     **connection_args: Any) -> Any:
        raise NotImplementedError(
            f"{self._connector_class.prefix} addresses cannot listen: the endpoint dials out to "
            "the fedcompute service, and nothing listens at either end")

    def get_address_host(self, loc: str) -> str:
        return self.get_address_host_port(loc)[0]

    def get_address_host_port(self, loc: str) -> tuple[str, int]:
        base, _ = parse_fed_address(loc)
        parts = urlsplit(f"//{base}")
        default = 443 if self._connector_class.ws_scheme == "wss" else 80
        return parts.hostname or "", parts.port or default

    def resolve_address(self, loc: str) -> str:
        return loc

    def get_local_address_for(self, loc: str) -> str:
        raise NotImplementedError(f"{self._connector_class.prefix} addresses are client-only")


class FedsBackend(FedBackend):
    """``feds://``: the same over TLS (``wss://``)."""

    _connector_class = FedsConnector
