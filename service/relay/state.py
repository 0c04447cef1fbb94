"""One API process's part of the relay: the control connections and comms it holds, and what
it shares with the other instances (``registry``) and hears from them (wake-up channels)."""

from __future__ import annotations

import logging
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from fedcompute.service.store import Store, keys

from .hop import HopListener
from .peers import BROKEN, CLOSE_ENDPOINT_GONE, CLOSE_REPLACED, Pair, Peer, RawPeer
from .registry import TTL, Registry

log = logging.getLogger(__name__)

#: How long a user's connection waits for the endpoint to dial back.
DIAL_TIMEOUT = 30.0
#: A control connection silent this long (bridges ping every 20 s) is dropped.
CONTROL_IDLE_TIMEOUT = 75.0


@dataclass
class Control:
    """An endpoint's control connection (its Dask bridge), held by this process."""

    endpoint_id: str
    peer: Peer
    session: str = ""
    versions: dict = field(default_factory=dict)
    #: The path the endpoint's scheduler serves its dashboard under ("": none).
    dashboard: str = ""
    since: float = field(default_factory=time.time)


class Relay:
    """The relay state of this API process."""

    def __init__(self, store: Store, max_comms: int, max_comms_per_user: int,
                 internal_host: str = "127.0.0.1", dial_timeout: float = DIAL_TIMEOUT,
                 control_idle_timeout: float = CONTROL_IDLE_TIMEOUT):
        self.store = store
        self.max_comms = max_comms
        self.max_comms_per_user = max_comms_per_user
        self.internal_host = internal_host
        self.dial_timeout = dial_timeout
        self.control_idle_timeout = control_idle_timeout
        self.instance_id = uuid.uuid4().hex
        self.registry = Registry(store.redis, self.instance_id)
        self.lock = threading.Lock()
        self.controls: dict[str, Control] = {}
        self.pairs: dict[str, Pair] = {}
        self.address = ""
        self._hop: HopListener | None = None
        self._stop = threading.Event()
        self._app: Any = None

    @classmethod
    def from_settings(cls, settings: Any, store: Store) -> Relay:
        return cls(store, settings.dask_max_comms, settings.dask_max_comms_per_user,
                   settings.relay_internal_host)

    # --- lifecycle -----------------------------------------------------------------------

    def start(self, app: Any = None) -> None:
        """Listen for hops, hear the other instances, keep the shared records alive (once per
        process; started by the first relay request if no server hook did it)."""
        with self.lock:
            if self._hop is not None:
                return
            from .routes import serve_hop  # the routes module owns what a hop does

            self._app = app
            self._hop = HopListener(self.internal_host, lambda *a: serve_hop(self, *a))
            self.address = self._hop.start()
        self.registry.advertise(self.address)
        self.store.wakeups.on(keys.wake_dial(""), self._on_dial)
        self.store.wakeups.on(keys.wake_control(""), self._on_control)
        threading.Thread(target=self._refresh, daemon=True, name="fedcompute-relay").start()

    def stop(self) -> None:
        """This process stops: close every relayed connection it holds (their clients and
        bridges reconnect to another instance), so that a graceful stop does not wait."""
        self._stop.set()
        if self._hop is not None:
            self._hop.stop()
        with self.lock:
            controls, pairs = list(self.controls.values()), list(self.pairs.values())
        for pair in pairs:
            pair.close(1012, "the service is restarting")
        for control in controls:
            control.peer.close(1012, "the service is restarting")

    def _refresh(self) -> None:
        while not self._stop.wait(TTL / 3):
            with self.lock:
                comms = {c: p.user_name for c, p in self.pairs.items()}
                controls = {e: c.session for e, c in self.controls.items()}
            try:
                self.registry.refresh(comms, controls, self.address)
            except Exception as exc:  # noqa: BLE001 - Redis restarting: next round
                log.warning("relay: refreshing shared records failed: %s", exc)

    # --- control connections -------------------------------------------------------------

    def control(self, endpoint_id: str) -> dict | None:
        """The endpoint's bridge as the instances know it (on whichever instance)."""
        return self.registry.control(endpoint_id)

    def register(self, control: Control) -> None:
        """Make ``control`` the endpoint's control connection, here and for every instance:
        a new session means the endpoint restarted, so comms to its old scheduler close."""
        self._replace(control.endpoint_id, control.session, keep=control)
        with self.lock:
            self.controls[control.endpoint_id] = control
        self.registry.set_control(control.endpoint_id, control.session, control.versions,
                                  control.dashboard)

    def unregister(self, control: Control) -> None:
        with self.lock:
            if self.controls.get(control.endpoint_id) is control:
                del self.controls[control.endpoint_id]
        self.registry.drop_control(control.endpoint_id, control.session)

    def _on_control(self, channel: str, data: bytes) -> None:
        endpoint_id = channel.removeprefix(keys.wake_control(""))
        session, _, instance = data.decode().partition(" ")
        if instance != self.instance_id:
            self._replace(endpoint_id, session)

    def _replace(self, endpoint_id: str, session: str, keep: Control | None = None) -> None:
        with self.lock:
            old = self.controls.get(endpoint_id)
            if old is not None and old is not keep:
                del self.controls[endpoint_id]
            stale = [p for p in self.pairs.values()
                     if p.endpoint_id == endpoint_id and p.session != session]
        if old is not None and old is not keep:
            old.peer.close(CLOSE_REPLACED, "replaced by a newer connection of this endpoint")
        for pair in stale:
            pair.close(CLOSE_ENDPOINT_GONE, f"endpoint {endpoint_id} restarted; its Dask "
                       "scheduler and everything on it are gone")

    # --- comms ---------------------------------------------------------------------------

    def open_comms(self, user: str | None = None) -> int:
        return self.registry.open_comms(user)

    def open_comms_of(self, endpoint_id: str) -> int:
        with self.lock:
            return sum(1 for p in self.pairs.values() if p.endpoint_id == endpoint_id)

    def new_pair(self, endpoint_id: str, session: str, user: Peer | RawPeer, user_name: str,
                 target: str = "dask") -> Pair:
        pair = Pair(secrets.token_urlsafe(18), endpoint_id, session, user, user_name, target)
        with self.lock:
            self.pairs[pair.comm_id] = pair
        self.registry.open_comm(pair.comm_id, endpoint_id, user_name)
        return pair

    def forget(self, pair: Pair) -> None:
        with self.lock:
            self.pairs.pop(pair.comm_id, None)
        self.registry.close_comm(pair.comm_id, pair.user_name)

    def pair(self, comm_id: str) -> Pair | None:
        with self.lock:
            return self.pairs.get(comm_id)

    def dial(self, pair: Pair) -> bool:
        """Ask the endpoint's bridge, wherever it is connected, to dial back for ``pair``."""
        with self.lock:
            control = self.controls.get(pair.endpoint_id)
        if control is not None:
            try:
                control.peer.send_json({"op": "dial", "comm_id": pair.comm_id,
                                        "target": pair.target})
                return True
            except BROKEN:
                return False
        return self.registry.ask_dial(pair.endpoint_id, pair.comm_id, pair.target) > 0

    def _on_dial(self, channel: str, data: bytes) -> None:
        endpoint_id = channel.removeprefix(keys.wake_dial(""))
        comm_id, _, target = data.decode().partition(" ")
        with self.lock:
            control = self.controls.get(endpoint_id)
        if control is not None:
            try:
                control.peer.send_json({"op": "dial", "comm_id": comm_id,
                                        "target": target or "dask"})
            except BROKEN as exc:
                log.info("relay: dial for endpoint %s failed: %s", endpoint_id, exc)
