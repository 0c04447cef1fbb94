"""What the service's instances share about the relay, in Redis: which instance holds each
endpoint's Dask bridge, where a pending comm waits, how to reach an instance, how many comms
are open. Records expire unless their instance refreshes them, so a dead instance's are gone
within ``TTL`` seconds."""

from __future__ import annotations

import json
import secrets
import time

import redis
from fedcompute.service.store import keys

#: Seconds a record lives without a refresh (instances refresh every TTL / 3).
TTL = 60


def _decoded(raw: dict) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


class Registry:
    def __init__(self, client: redis.Redis, instance_id: str):
        self.redis = client
        self.instance_id = instance_id
        self._secret: str | None = None

    # --- instances ---------------------------------------------------------------------

    def secret(self) -> str:
        """The shared secret of relay hops (created once, by whichever instance is first)."""
        if self._secret is None:
            self.redis.set(keys.relay_secret(), secrets.token_urlsafe(32), nx=True)
            self._secret = self.redis.get(keys.relay_secret()).decode()
        return self._secret

    def advertise(self, address: str) -> None:
        self.redis.set(keys.relay_instance(self.instance_id), address, ex=TTL)

    def address_of(self, instance_id: str) -> str | None:
        raw = self.redis.get(keys.relay_instance(instance_id))
        return raw.decode() if raw else None

    def count_hop(self) -> None:
        self.redis.incr(keys.relay_hops())

    # --- control connections -------------------------------------------------------------

    def set_control(self, endpoint_id: str, session: str, versions: dict,
                    dashboard: str = "") -> None:
        """This instance now holds the endpoint's bridge; the others drop older ones."""
        pipe = self.redis.pipeline()
        pipe.hset(keys.relay_control(endpoint_id), mapping={
            "instance": self.instance_id, "session": session, "since": time.time(),
            "versions": json.dumps(versions), "dashboard": dashboard})
        pipe.expire(keys.relay_control(endpoint_id), TTL)
        pipe.publish(keys.wake_control(endpoint_id), f"{session} {self.instance_id}")
        pipe.execute()

    def control(self, endpoint_id: str) -> dict | None:
        raw = self.redis.hgetall(keys.relay_control(endpoint_id))
        if not raw:
            return None
        record = _decoded(raw)
        record["versions"] = json.loads(record.get("versions") or "{}")
        record["since"] = float(record.get("since") or 0)
        return record

    def drop_control(self, endpoint_id: str, session: str) -> None:
        """Forget the endpoint's bridge if it is still this instance's ``session``."""
        record = self.control(endpoint_id)
        if record and record["instance"] == self.instance_id and record["session"] == session:
            self.redis.delete(keys.relay_control(endpoint_id))

    def ask_dial(self, endpoint_id: str, comm_id: str, target: str = "dask") -> int:
        """Ask the instance holding the endpoint's bridge to have it dial ``comm_id`` (for
        ``target``); how many instances heard."""
        return int(self.redis.publish(keys.wake_dial(endpoint_id), f"{comm_id} {target}"))

    # --- comms ---------------------------------------------------------------------------

    def open_comm(self, comm_id: str, endpoint_id: str, user: str) -> None:
        expires = time.time() + TTL
        pipe = self.redis.pipeline()
        pipe.hset(keys.relay_comm(comm_id), mapping={
            "instance": self.instance_id, "endpoint": endpoint_id, "user": user})
        pipe.expire(keys.relay_comm(comm_id), TTL)
        pipe.zadd(keys.relay_open(), {comm_id: expires})
        pipe.zadd(keys.relay_open(user), {comm_id: expires})
        pipe.expire(keys.relay_open(user), TTL)
        pipe.execute()

    def comm(self, comm_id: str) -> dict[str, str] | None:
        raw = self.redis.hgetall(keys.relay_comm(comm_id))
        return _decoded(raw) if raw else None

    def answered(self, comm_id: str) -> None:
        """The endpoint dialed back: the comm no longer waits."""
        self.redis.delete(keys.relay_comm(comm_id))

    def close_comm(self, comm_id: str, user: str) -> None:
        pipe = self.redis.pipeline()
        pipe.delete(keys.relay_comm(comm_id))
        pipe.zrem(keys.relay_open(), comm_id)
        pipe.zrem(keys.relay_open(user), comm_id)
        pipe.execute()

    def open_comms(self, user: str | None = None) -> int:
        """Open comms across every instance (all, or one user's)."""
        key = keys.relay_open(user)
        pipe = self.redis.pipeline()
        pipe.zremrangebyscore(key, "-inf", time.time())
        pipe.zcard(key)
        return int(pipe.execute()[1])

    def refresh(self, comms: dict[str, str], controls: dict[str, str], address: str) -> None:
        """Keep this instance's records alive: ``comms`` comm id -> user, ``controls``
        endpoint id -> session."""
        expires = time.time() + TTL
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(keys.relay_instance(self.instance_id), address, ex=TTL)
        for comm_id, user in comms.items():
            pipe.zadd(keys.relay_open(), {comm_id: expires})
            pipe.zadd(keys.relay_open(user), {comm_id: expires})
            pipe.expire(keys.relay_open(user), TTL)
        for endpoint_id in controls:
            pipe.expire(keys.relay_control(endpoint_id), TTL)
        pipe.execute()
