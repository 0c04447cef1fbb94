"""The Redis layout of the service, and every operation on it.

Keys (all under ``fc:``):

* ``token:<sha256>``  hash: kind (user|endpoint), name            ``user:<name>``  hash
* ``user:<name>:tokens`` set of token hashes, for revocation       ``users``        set
* ``fn:<id>``        hash: owner, function_name, body, sharing     ``user:<n>:functions`` set
* ``ep:<id>``        hash: owner, name, sharing, credential hash, heartbeat, session, status
* ``ep:<id>:q``      stream of task ids, consumer group ``agent``: one entry per queued or
  leased task; an entry is acknowledged and deleted only once its result is stored
* ``task:<id>``      hash: state, owner, endpoint, function, group, payload, timestamps, result
* ``tg:<id>``        hash: owner; ``tg:<id>:tasks`` list of task ids; ``tg:<id>:rs`` stream of
  finished task ids, the submitter's result stream

Multi-key updates run as Lua scripts so that a crash at any point leaves a consistent state.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import redis
from fedcompute.protocol import FINAL_STATES, packb, unpackb

GROUP = "agent"
_FINAL = tuple(s.value for s in FINAL_STATES)

_LUA_COMMON = """
local function is_final(st)
  return st == 'success' or st == 'failed' or st == 'cancelled'
end
local function drop_entry(q, entry)
  if entry and entry ~= '' then
    redis.call('XACK', q, 'agent', entry)
    redis.call('XDEL', q, entry)
  end
end
local function finish(key, tid, ttl, now)
  local gid = redis.call('HGET', key, 'group')
  redis.call('HSET', key, 'completed', '1', 't_completed', now)
  redis.call('HDEL', key, 'payload', 'session')
  redis.call('EXPIRE', key, ttl)
  local rs = 'fc:tg:' .. gid .. ':rs'
  redis.call('XADD', rs, '*', 't', tid)
  redis.call('EXPIRE', rs, ttl)
end
"""

# ARGV: owner, endpoint, group, now, task_ttl, then 5 per task: id, function, payload, rs, opts
SUBMIT = _LUA_COMMON + """
local owner, eid, gid, now, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local gowner = redis.call('HGET', 'fc:tg:' .. gid, 'owner')
if gowner and gowner ~= owner then return {-1, 'task group belongs to another user'} end
for i = 6, #ARGV, 5 do
  local o = redis.call('HGET', 'fc:task:' .. ARGV[i], 'owner')
  if o and o ~= owner then return {-1, 'task id ' .. ARGV[i] .. ' is taken'} end
end
local q = 'fc:ep:' .. eid .. ':q'
local tg = 'fc:tg:' .. gid .. ':tasks'
local dup = 0
for i = 6, #ARGV, 5 do
  local key = 'fc:task:' .. ARGV[i]
  if redis.call('EXISTS', key) == 1 then
    dup = dup + 1
  else
    local entry = redis.call('XADD', q, '*', 't', ARGV[i])
    redis.call('HSET', key, 'owner', owner, 'endpoint', eid, 'function', ARGV[i + 1],
      'group', gid, 'payload', ARGV[i + 2], 'rs', ARGV[i + 3], 'opts', ARGV[i + 4],
      'state', 'waiting-for-endpoint', 'attempts', '0', 'entry', entry,
      't_received', now, 't_waiting-for-endpoint', now)
    redis.call('EXPIRE', key, ttl)
    redis.call('RPUSH', tg, ARGV[i])
  end
end
redis.call('HSET', 'fc:tg:' .. gid, 'owner', owner, 'updated', now)
redis.call('EXPIRE', 'fc:tg:' .. gid, ttl)
redis.call('EXPIRE', tg, ttl)
return {dup, ''}
"""

# ARGV: endpoint, session, now, then 2 per entry: entry id, task id.
# Returns {stale, tasks}: stale is 0, 1 (another session replaced this one) or 2 (this session
# went silent and its leases were reclaimed). A stale session gets nothing: what was just
# delivered to it (a long-poll outliving its agent, or blocked while the agent was silent) goes
# back on the queue with no attempt counted, or it would be leased to nobody.
LEASE = _LUA_COMMON + """
local eid, session, now = ARGV[1], ARGV[2], ARGV[3]
local q = 'fc:ep:' .. eid .. ':q'
local current = redis.call('HGET', 'fc:ep:' .. eid, 'session')
local stale = current ~= session
local out = {}
for i = 4, #ARGV, 2 do
  local entry, tid = ARGV[i], ARGV[i + 1]
  local key = 'fc:task:' .. tid
  local st = redis.call('HGET', key, 'state')
  if (not st) or is_final(st) or redis.call('HGET', key, 'entry') ~= entry then
    drop_entry(q, entry)
  elseif stale then
    drop_entry(q, entry)
    local new = redis.call('XADD', q, '*', 't', tid)
    redis.call('HSET', key, 'state', 'waiting-for-endpoint', 'entry', new,
      't_waiting-for-endpoint', now)
    redis.call('HDEL', key, 'session')
  else
    if st ~= 'running' and st ~= 'waiting-for-nodes' then
      redis.call('HSET', key, 'state', 'running', 't_running', now)
    end
    redis.call('HSET', key, 'session', session)
    local f = redis.call('HMGET', key, 'function', 'payload', 'rs', 'opts', 'attempts')
    table.insert(out, {tid, f[1], f[2], f[3], f[4], f[5]})
  end
end
local code = 0
if stale then code = ((not current or current == '') and 2 or 1) end
return {code, out}
"""

# ARGV: endpoint, session, now[, status json]. Records liveness if the session is the current
# one, or takes it back if it had expired (went silent, leases reclaimed) and no other agent
# connected since. Returns 0 if another session replaced this one.
TOUCH = """
local key = 'fc:ep:' .. ARGV[1]
local current = redis.call('HGET', key, 'session')
if current and current ~= '' and current ~= ARGV[2] then return 0 end
redis.call('HSET', key, 'session', ARGV[2], 'last_heartbeat', ARGV[3])
if ARGV[4] then redis.call('HSET', key, 'status', ARGV[4]) end
return 1
"""

# ARGV: endpoint, session, silent-before. The session went silent (no sign of life since
# silent-before): expire it, so a long-poll it left blocked in the service cannot take back the
# tasks about to be reclaimed from it. Returns 1 if expired.
EXPIRE_SESSION = """
local key = 'fc:ep:' .. ARGV[1]
local f = redis.call('HMGET', key, 'session', 'last_heartbeat')
if f[1] ~= ARGV[2] or (f[2] and tonumber(f[2]) > tonumber(ARGV[3])) then return 0 end
redis.call('HSET', key, 'session', '')
return 1
"""

# ARGV: queue, consumer. Deletes the consumer only if nothing is pending for it: XGROUP
# DELCONSUMER drops its pending entries, and an entry delivered after its leases were reclaimed
# (a long-poll outliving its agent) would be lost with them.
DELCONSUMER = """
if #redis.call('XPENDING', ARGV[1], 'agent', '-', '+', 1, ARGV[2]) == 0 then
  redis.call('XGROUP', 'DELCONSUMER', ARGV[1], 'agent', ARGV[2])
  return 1
end
return 0
"""

# ARGV: endpoint, now, result_ttl, then 6 per result: id, status, result, exc, stdout, stderr
RESULTS = _LUA_COMMON + """
local eid, now, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local q = 'fc:ep:' .. eid .. ':q'
local stored, dup = 0, 0
for i = 4, #ARGV, 6 do
  local tid = ARGV[i]
  local key = 'fc:task:' .. tid
  local f = redis.call('HMGET', key, 'state', 'endpoint', 'entry')
  if (not f[1]) or f[2] ~= eid or is_final(f[1]) then
    dup = dup + 1
  else
    redis.call('HSET', key, 'state', ARGV[i + 1], 'result', ARGV[i + 2], 'exc', ARGV[i + 3],
      'stdout', ARGV[i + 4], 'stderr', ARGV[i + 5], 't_' .. ARGV[i + 1], now)
    drop_entry(q, f[3])
    finish(key, tid, ttl, now)
    stored = stored + 1
  end
end
return {stored, dup}
"""

# ARGV: endpoint, now, result_ttl, max_attempts, count_attempt (0|1), lost envelope,
#       then 2 per entry: entry id, task id
REQUEUE = _LUA_COMMON + """
local eid, now, ttl, maxa, count, lost = ARGV[1], ARGV[2], tonumber(ARGV[3]),
  tonumber(ARGV[4]), ARGV[5] == '1', ARGV[6]
local q = 'fc:ep:' .. eid .. ':q'
local requeued, failed = 0, 0
for i = 7, #ARGV, 2 do
  local entry, tid = ARGV[i], ARGV[i + 1]
  local key = 'fc:task:' .. tid
  local f = redis.call('HMGET', key, 'state', 'entry')
  if (not f[1]) or is_final(f[1]) or f[2] ~= entry then
    drop_entry(q, entry)
  else
    local attempts = tonumber(redis.call('HGET', key, 'attempts') or '0')
    if count then attempts = redis.call('HINCRBY', key, 'attempts', 1) end
    drop_entry(q, entry)
    if attempts >= maxa then
      redis.call('HSET', key, 'state', 'failed', 'exc', lost, 't_failed', now)
      finish(key, tid, ttl, now)
      failed = failed + 1
    else
      local new = redis.call('XADD', q, '*', 't', tid)
      redis.call('HSET', key, 'state', 'waiting-for-endpoint', 'entry', new,
        't_waiting-for-endpoint', now)
      redis.call('HDEL', key, 'session')
      requeued = requeued + 1
    end
  end
end
return {requeued, failed}
"""

# ARGV: task id, now, result_ttl, cancelled envelope
CANCEL = _LUA_COMMON + """
local tid, now, ttl, env = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local key = 'fc:task:' .. tid
local f = redis.call('HMGET', key, 'state', 'endpoint', 'entry')
if not f[1] then return 'unknown' end
if f[1] == 'received' or f[1] == 'waiting-for-endpoint' then
  redis.call('HSET', key, 'state', 'cancelled', 'exc', env, 't_cancelled', now)
  drop_entry('fc:ep:' .. f[2] .. ':q', f[3])
  finish(key, tid, ttl, now)
  return 'cancelled'
end
return f[1]
"""

# ARGV: state, now, then task ids (only running tasks of this endpoint change)
MARK = """
local st, now, eid = ARGV[1], ARGV[2], ARGV[3]
local n = 0
for i = 4, #ARGV do
  local key = 'fc:task:' .. ARGV[i]
  local f = redis.call('HMGET', key, 'state', 'endpoint')
  if f[2] == eid and (f[1] == 'running' or f[1] == 'waiting-for-nodes') and f[1] ~= st then
    redis.call('HSET', key, 'state', st, 't_' .. st, now)
    n = n + 1
  end
end
return n
"""

TASK_FIELDS = ("state", "function", "endpoint", "group", "attempts", "completed", "result", "exc",
               "stdout", "stderr", "owner")
TIMESTAMP_STATES = ("received", "waiting-for-endpoint", "waiting-for-nodes", "running",
                    "success", "failed", "cancelled", "completed")


def _s(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


def _block_ms(wait: float) -> int | None:
    """XREAD's BLOCK for a wait in seconds: None (do not block) for 0, and never 0 for a
    positive wait, since BLOCK 0 means "forever" (a request hung, a server thread lost)."""
    return max(1, int(wait * 1000)) if wait > 0 else None


#: Set when this API process is asked to stop (see ``gunicorn_conf``): long-polls then end
#: within one slice, so a graceful stop never waits out a 20-30 s poll.
stopping = threading.Event()
#: Long-polls block in Redis for at most this long at a time, then look at ``stopping``.
LONG_POLL_SLICE = 1.0


def _long_poll(read: Any, wait: float) -> Any:
    """Call ``read(block_ms)`` until it returns something, ``wait`` is over or we stop."""
    deadline = time.monotonic() + wait
    while True:
        left = deadline - time.monotonic()
        reply = read(_block_ms(min(max(left, 0.0), LONG_POLL_SLICE)))
        if reply or left <= LONG_POLL_SLICE or stopping.is_set():
            return reply


class StaleSession(Exception):
    """The agent session was replaced by a newer one of the same endpoint."""


def sharing_allows(record: dict[str, Any], user: str) -> bool:
    """Owner, public, or named in ``shared_with``."""
    return (record.get("owner") == user or record.get("public") is True
            or user in record.get("shared_with", ()))


class Store:
    """All reads and writes of the service's Redis."""

    def __init__(self, url: str, settings: Any):
        self.url = url
        self.settings = settings
        self.redis = redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5,
                                          health_check_interval=30, max_connections=512)
        # Blocking reads (long polls) get their own pool, with no socket timeout of their own.
        self.blocking = redis.Redis.from_url(url, socket_timeout=None, socket_connect_timeout=5,
                                             max_connections=512)
        self._submit = self.redis.register_script(SUBMIT)
        self._lease = self.redis.register_script(LEASE)
        self._results = self.redis.register_script(RESULTS)
        self._requeue = self.redis.register_script(REQUEUE)
        self._cancel = self.redis.register_script(CANCEL)
        self._mark = self.redis.register_script(MARK)
        self._delconsumer = self.redis.register_script(DELCONSUMER)
        self._touch = self.redis.register_script(TOUCH)
        self._expire_session = self.redis.register_script(EXPIRE_SESSION)

    def ping(self) -> bool:
        return bool(self.redis.ping())

    # --- principals --------------------------------------------------------------------

    def create_user(self, name: str) -> bool:
        created = self.redis.hsetnx(f"fc:user:{name}", "created", time.time())
        self.redis.sadd("fc:users", name)
        return bool(created)

    def user_exists(self, name: str) -> bool:
        return bool(self.redis.exists(f"fc:user:{name}"))

    def list_users(self) -> list[str]:
        return sorted(m.decode() for m in self.redis.smembers("fc:users"))

    def add_token(self, token_hash: str, kind: str, name: str, label: str = "") -> None:
        pipe = self.redis.pipeline()
        pipe.hset(f"fc:token:{token_hash}",
                  mapping={"kind": kind, "name": name, "created": time.time(), "label": label})
        owner_set = f"fc:user:{name}:tokens" if kind == "user" else f"fc:ep:{name}:tokens"
        pipe.sadd(owner_set, token_hash)
        pipe.execute()

    def lookup_token(self, token_hash: str, rate_window: int = 0) -> tuple[dict, int]:
        """The token's principal and, if rate limiting is on, this window's request count."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(f"fc:token:{token_hash}", "kind", "name")
        if rate_window:
            key = f"fc:rl:{token_hash}:{int(time.time() // rate_window)}"
            pipe.incr(key)
            pipe.expire(key, rate_window * 2)
        out = pipe.execute()
        kind, name = out[0]
        principal = {"kind": _s(kind), "name": _s(name)} if kind else {}
        return principal, (out[1] if rate_window else 0)

    def revoke_tokens(self, kind: str, name: str) -> int:
        owner_set = f"fc:user:{name}:tokens" if kind == "user" else f"fc:ep:{name}:tokens"
        hashes = [h.decode() for h in self.redis.smembers(owner_set)]
        pipe = self.redis.pipeline()
        for h in hashes:
            pipe.delete(f"fc:token:{h}")
        pipe.delete(owner_set)
        pipe.execute()
        return len(hashes)

    def revoke_token(self, token_hash: str) -> bool:
        principal, _ = self.lookup_token(token_hash)
        if not principal:
            return False
        owner_set = (f"fc:user:{principal['name']}:tokens" if principal["kind"] == "user"
                     else f"fc:ep:{principal['name']}:tokens")
        pipe = self.redis.pipeline()
        pipe.delete(f"fc:token:{token_hash}")
        pipe.srem(owner_set, token_hash)
        pipe.execute()
        return True

    # --- functions ---------------------------------------------------------------------

    def put_function(self, owner: str, name: str, body: bytes, digest: str, description: str,
                     public: bool, shared_with: list[str]) -> str:
        function_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"fedcompute:{owner}:{digest}"))
        key = f"fc:fn:{function_id}"
        pipe = self.redis.pipeline()
        pipe.hsetnx(key, "created", time.time())
        pipe.hset(key, mapping={"owner": owner, "function_name": name, "body": body,
                                "description": description, "public": int(public),
                                "shared_with": json.dumps(sorted(set(shared_with)))})
        pipe.sadd(f"fc:user:{owner}:functions", function_id)
        pipe.execute()
        return function_id

    def get_function(self, function_id: str, with_body: bool = False) -> dict | None:
        names = ["owner", "function_name", "description", "public", "shared_with", "created"]
        if with_body:
            names.append("body")
        values = self.redis.hmget(f"fc:fn:{function_id}", names)
        if values[0] is None:
            return None
        rec = dict(zip(names, values, strict=True))
        out = {"function_id": function_id, "owner": rec["owner"].decode(),
               "function_name": rec["function_name"].decode(),
               "description": (rec["description"] or b"").decode(),
               "public": rec["public"] == b"1",
               "shared_with": json.loads(rec["shared_with"] or b"[]"),
               "created": float(rec["created"] or 0)}
        if with_body:
            out["body"] = rec["body"]
        return out

    def functions_usable(self, function_ids: list[str], user: str) -> dict[str, bool | None]:
        """For each id: usable by ``user``, not usable (False), or unknown (None)."""
        pipe = self.redis.pipeline(transaction=False)
        for fid in function_ids:
            pipe.hmget(f"fc:fn:{fid}", "owner", "public", "shared_with")
        out: dict[str, bool | None] = {}
        for fid, (owner, public, shared) in zip(function_ids, pipe.execute(), strict=True):
            if owner is None:
                out[fid] = None
            else:
                out[fid] = sharing_allows({"owner": owner.decode(), "public": public == b"1",
                                           "shared_with": json.loads(shared or b"[]")}, user)
        return out

    def function_bodies(self, function_ids: list[str]) -> dict[str, bytes]:
        pipe = self.redis.pipeline(transaction=False)
        for fid in function_ids:
            pipe.hget(f"fc:fn:{fid}", "body")
        return {fid: body for fid, body in zip(function_ids, pipe.execute(), strict=True)
                if body is not None}

    def update_sharing(self, kind: str, object_id: str, public: bool | None,
                       shared_with: list[str] | None,
                       allowed_functions: list[str] | None = None,
                       clear_allowed: bool = False) -> None:
        key = f"fc:{kind}:{object_id}"
        mapping: dict[str, Any] = {}
        if public is not None:
            mapping["public"] = int(public)
        if shared_with is not None:
            mapping["shared_with"] = json.dumps(sorted(set(shared_with)))
        if allowed_functions is not None:
            mapping["allowed_functions"] = json.dumps(allowed_functions)
        elif clear_allowed:
            mapping["allowed_functions"] = ""
        if mapping:
            self.redis.hset(key, mapping=mapping)

    def delete_function(self, function_id: str, owner: str) -> None:
        pipe = self.redis.pipeline()
        pipe.delete(f"fc:fn:{function_id}")
        pipe.srem(f"fc:user:{owner}:functions", function_id)
        pipe.execute()

    # --- endpoints ---------------------------------------------------------------------

    def put_endpoint(self, endpoint_id: str, owner: str, name: str, public: bool,
                     shared_with: list[str], allowed_functions: list[str] | None,
                     metadata: dict, credential_hash: str) -> None:
        key = f"fc:ep:{endpoint_id}"
        old = self.redis.hget(key, "credential")
        pipe = self.redis.pipeline()
        if old:
            pipe.delete(f"fc:token:{old.decode()}")
            pipe.srem(f"fc:ep:{endpoint_id}:tokens", old)
        pipe.hsetnx(key, "created", time.time())
        pipe.hset(key, mapping={
            "owner": owner, "name": name, "public": int(public),
            "shared_with": json.dumps(sorted(set(shared_with))),
            "allowed_functions": "" if allowed_functions is None else json.dumps(allowed_functions),
            "metadata": json.dumps(metadata), "credential": credential_hash})
        pipe.sadd(f"fc:user:{owner}:endpoints", endpoint_id)
        pipe.sadd("fc:endpoints", endpoint_id)
        try:
            pipe.xgroup_create(f"fc:ep:{endpoint_id}:q", GROUP, id="0", mkstream=True)
            pipe.execute()
        except redis.ResponseError as exc:  # BUSYGROUP: already there
            if "BUSYGROUP" not in str(exc):
                raise
        self.add_token(credential_hash, "endpoint", endpoint_id)

    def get_endpoint(self, endpoint_id: str) -> dict | None:
        raw = self.redis.hgetall(f"fc:ep:{endpoint_id}")
        if not raw or b"owner" not in raw:
            return None
        rec = {k.decode(): v for k, v in raw.items()}
        last = float(rec["last_heartbeat"]) if rec.get("last_heartbeat") else None
        online = (bool(rec.get("session")) and last is not None
                  and time.time() - last < self.settings.heartbeat_timeout)
        allowed = rec.get("allowed_functions") or b""
        return {
            "endpoint_id": endpoint_id, "name": rec["name"].decode(),
            "owner": rec["owner"].decode(), "public": rec.get("public") == b"1",
            "shared_with": json.loads(rec.get("shared_with") or b"[]"),
            "allowed_functions": json.loads(allowed) if allowed else None,
            "status": "online" if online else "offline", "last_heartbeat": last,
            "created": float(rec.get("created") or 0),
            "session": _s(rec.get("session")),
            "details": json.loads(rec.get("status") or b"{}"),
        }

    def endpoint_usable_by(self, endpoint_id: str, user: str) -> bool:
        record = self.get_endpoint(endpoint_id)
        return record is not None and sharing_allows(record, user)

    def endpoints_of(self, user: str) -> list[dict]:
        ids = [i.decode() for i in self.redis.smembers(f"fc:user:{user}:endpoints")]
        ids += [i.decode() for i in self.redis.smembers("fc:endpoints") if i.decode() not in ids]
        out = []
        for eid in ids:
            record = self.get_endpoint(eid)
            if record and sharing_allows(record, user):
                out.append(record)
        return sorted(out, key=lambda r: r["created"])

    def endpoint_counts(self, endpoint_id: str) -> tuple[int, int]:
        """(queued in the service, leased to the endpoint)."""
        q = f"fc:ep:{endpoint_id}:q"
        pipe = self.redis.pipeline(transaction=False)
        pipe.xlen(q)
        pipe.xpending(q, GROUP)
        try:
            length, pending = pipe.execute()
        except redis.ResponseError:
            return 0, 0
        leased = pending["pending"] if pending else 0
        return max(length - leased, 0), leased

    def delete_endpoint(self, endpoint_id: str, owner: str) -> None:
        self.revoke_tokens("endpoint", endpoint_id)
        pipe = self.redis.pipeline()
        pipe.delete(f"fc:ep:{endpoint_id}", f"fc:ep:{endpoint_id}:q")
        pipe.srem(f"fc:user:{owner}:endpoints", endpoint_id)
        pipe.srem("fc:endpoints", endpoint_id)
        pipe.execute()

    def all_endpoint_ids(self) -> list[str]:
        return [i.decode() for i in self.redis.smembers("fc:endpoints")]

    # --- tasks -------------------------------------------------------------------------

    def submit(self, owner: str, endpoint_id: str, group: str, tasks: list[dict]) -> int:
        """Write a batch in one script: records, queue entries, group membership."""
        argv: list[Any] = [owner, endpoint_id, group, time.time(), self.settings.task_ttl]
        for t in tasks:
            argv += [t["task_id"], t["function_id"], t["payload"],
                     packb(t["resource_specification"]) if t.get("resource_specification") else b"",
                     packb(t["options"]) if t.get("options") else b""]
        dup, error = self._submit(args=argv)
        if dup == -1:
            raise PermissionError(error.decode())
        return int(dup)

    def get_tasks(self, task_ids: list[str]) -> list[dict | None]:
        pipe = self.redis.pipeline(transaction=False)
        for tid in task_ids:
            pipe.hmget(f"fc:task:{tid}", *TASK_FIELDS,
                       *(f"t_{s}" for s in TIMESTAMP_STATES))
        return [self._record(tid, values) for tid, values in
                zip(task_ids, pipe.execute(), strict=True)]

    @staticmethod
    def _record(task_id: str, values: list) -> dict | None:
        if values[0] is None:
            return None
        (state, function, endpoint, group, attempts, completed, result, exc, stdout, stderr,
         owner) = values[:len(TASK_FIELDS)]
        stamps = {s: float(v) for s, v in zip(TIMESTAMP_STATES, values[len(TASK_FIELDS):],
                                               strict=True) if v is not None}
        record = {"task_id": task_id, "status": state.decode(), "function_id": _s(function),
                  "endpoint_id": _s(endpoint), "task_group_id": _s(group),
                  "attempts": int(attempts or 0), "timestamps": stamps,
                  "completed": completed == b"1", "owner": _s(owner)}
        if record["completed"]:
            if result:
                record["result"] = result
            if exc:
                record["exception"] = unpackb(exc)
            if stdout:
                record["stdout"] = stdout.decode(errors="replace")
            if stderr:
                record["stderr"] = stderr.decode(errors="replace")
        return record

    def task_owner(self, task_id: str) -> str | None:
        return _s(self.redis.hget(f"fc:task:{task_id}", "owner"))

    def cancel(self, task_id: str, envelope: bytes) -> str:
        return self._cancel(args=[task_id, time.time(), self.settings.result_ttl, envelope]).decode()

    def claim_group(self, group: str, owner: str) -> bool:
        """Make ``owner`` the owner of a task group unless another user owns it already."""
        key = f"fc:tg:{group}"
        pipe = self.redis.pipeline()
        pipe.hsetnx(key, "owner", owner)
        pipe.expire(key, self.settings.task_ttl)
        pipe.hget(key, "owner")
        return _s(pipe.execute()[-1]) == owner

    def group_owner(self, group: str) -> str | None:
        return _s(self.redis.hget(f"fc:tg:{group}", "owner"))

    def group_task_ids(self, group: str) -> list[str]:
        return [t.decode() for t in self.redis.lrange(f"fc:tg:{group}:tasks", 0, -1)]

    def read_results(self, group: str, cursor: str, wait: float, limit: int
                     ) -> tuple[str, list[dict]]:
        """Long-poll a task group's result stream after ``cursor``."""
        reply = _long_poll(lambda block: self.blocking.xread(
            {f"fc:tg:{group}:rs": cursor}, count=limit, block=block), wait)
        if not reply:
            return cursor, []
        entries = reply[0][1]
        ids = [fields[b"t"].decode() for _, fields in entries]
        records = [r for r in self.get_tasks(ids) if r is not None]
        return entries[-1][0].decode(), records

    # --- the endpoint agent ------------------------------------------------------------

    def connect_agent(self, endpoint_id: str, session: str, status: dict) -> int:
        """A new agent session: its predecessors' leases are reclaimed at once."""
        self.redis.hset(f"fc:ep:{endpoint_id}", mapping={
            "session": session, "last_heartbeat": time.time(), "status": json.dumps(status)})
        return self.reclaim(endpoint_id, keep_session=session)[0]

    def heartbeat(self, endpoint_id: str, session: str, status: dict) -> bool:
        """Record liveness; False if this session has been replaced by a newer one."""
        return bool(self._touch(args=[endpoint_id, session, time.time(), json.dumps(status)]))

    def current_session(self, endpoint_id: str) -> str | None:
        return _s(self.redis.hget(f"fc:ep:{endpoint_id}", "session"))

    def touch(self, endpoint_id: str, session: str) -> None:
        """Any request of the endpoint's current agent session shows it is alive, like a
        heartbeat: a busy agent whose heartbeats lag must not have its leases reclaimed.
        Raises :class:`StaleSession` for a replaced session."""
        if self._touch(args=[endpoint_id, session, time.time()]) == 0:
            raise StaleSession(session)

    def lease(self, endpoint_id: str, session: str, max_tasks: int, wait: float,
              recover: bool = False) -> list[dict]:
        """Up to ``max_tasks`` new tasks for the session (blocking up to ``wait``), or with
        ``recover`` every task already leased to it: a lease whose reply was lost (the API
        process died, the request timed out) is still pending for this live session, and would
        never be reclaimed. Raises :class:`StaleSession` if the session was replaced."""
        q = f"fc:ep:{endpoint_id}:q"
        self.touch(endpoint_id, session)
        if recover:
            entries: list = []
            start = "0"
            while True:  # the session's own pending entries, oldest first
                page = self.redis.xreadgroup(GROUP, session, {q: start}, count=2000)
                got = page[0][1] if page else []
                entries += [(e, f) for e, f in got if f]
                if len(got) < 2000:
                    break
                start = got[-1][0]
        else:
            reply = _long_poll(lambda block: self.blocking.xreadgroup(
                GROUP, session, {q: ">"}, count=max_tasks, block=block), wait)
            entries = reply[0][1] if reply else []
        if not entries:
            return []
        argv: list[Any] = [endpoint_id, session, time.time()]
        for entry, fields in entries:
            argv += [entry, fields[b"t"]]
        stale, tasks = self._lease(args=argv)
        if stale == 1:
            raise StaleSession(session)
        if stale == 2:
            return []  # expired while this request was blocked: handed back; it may resume
        leased = []
        for tid, fid, payload, rs, opts, attempts in tasks:
            leased.append({"task_id": tid.decode(), "function_id": fid.decode(),
                           "payload": payload,
                           "resource_specification": unpackb(rs) if rs else None,
                           "options": unpackb(opts) if opts else None,
                           "attempt": int(attempts or 0)})
        return leased

    def store_results(self, endpoint_id: str, results: list[dict]) -> tuple[int, int]:
        argv: list[Any] = [endpoint_id, time.time(), self.settings.result_ttl]
        for r in results:
            exc = r.get("exception")
            argv += [r["task_id"], r["status"], r.get("result") or b"",
                     packb(exc) if exc else b"", r.get("stdout") or "", r.get("stderr") or ""]
        stored, dup = self._results(args=argv)
        return int(stored), int(dup)

    def mark(self, endpoint_id: str, state: str, task_ids: list[str]) -> int:
        return int(self._mark(args=[state, time.time(), endpoint_id, *task_ids]))

    def release(self, endpoint_id: str, session: str, task_ids: list[str],
                disconnect: bool = False) -> int:
        """Hand leased tasks back without counting an attempt (a graceful stop).

        With ``disconnect`` the stopping agent's session also ends: everything still leased to
        it is handed back (what a long-poll it abandoned received), and a poll still blocked
        here hands what it receives back to the queue (see LEASE). A session replaced by a
        newer one meanwhile is not ended, and only ``task_ids`` go back."""
        ended = disconnect and self._expire_session(
            args=[endpoint_id, session, time.time() + 1])
        pairs = self._pending(endpoint_id, session)
        if not ended:
            wanted = set(task_ids)
            pairs = [(e, t) for e, t in pairs if t in wanted]
        return self._requeue_pairs(endpoint_id, pairs, count_attempt=False)[0]

    def _consumers(self, endpoint_id: str) -> list[str]:
        try:
            found = self.redis.xinfo_consumers(f"fc:ep:{endpoint_id}:q", GROUP)
        except redis.ResponseError:
            return []
        return [c["name"].decode() if isinstance(c["name"], bytes) else c["name"] for c in found]

    def _pending(self, endpoint_id: str, consumer: str) -> list[tuple[str, str]]:
        """The entries leased by one consumer: (entry id, task id)."""
        q = f"fc:ep:{endpoint_id}:q"
        out: list[tuple[str, str]] = []
        start = "-"
        while True:
            page = self.redis.xpending_range(q, GROUP, min=start, max="+", count=1000,
                                             consumername=consumer)
            if not page:
                return out
            ids = [p["message_id"] for p in page]
            # XCLAIM to the same consumer returns the entries' fields (the task ids).
            for entry, fields in self.redis.xclaim(q, GROUP, consumer, 0, ids):
                if fields:
                    out.append((entry.decode(), fields[b"t"].decode()))
            if len(page) < 1000:
                return out
            ms, seq = ids[-1].decode().split("-")
            start = f"{ms}-{int(seq) + 1}"

    def _requeue_pairs(self, endpoint_id: str, pairs: list[tuple[str, str]],
                       count_attempt: bool) -> tuple[int, int]:
        if not pairs:
            return 0, 0
        lost = packb({"type": "fedcompute.errors.EndpointLost",
                      "message": f"endpoint {endpoint_id} stopped responding while running this "
                                 f"task {self.settings.max_attempts} times; giving up",
                      "traceback": "", "pickle": b""})
        requeued = failed = 0
        for i in range(0, len(pairs), 2000):
            argv: list[Any] = [endpoint_id, time.time(), self.settings.result_ttl,
                               self.settings.max_attempts, int(count_attempt), lost]
            for entry, tid in pairs[i:i + 2000]:
                argv += [entry, tid]
            r, f = self._requeue(args=argv)
            requeued += int(r)
            failed += int(f)
        return requeued, failed

    def reclaim(self, endpoint_id: str, keep_session: str | None = None) -> tuple[int, int]:
        """Requeue leases held by sessions other than ``keep_session`` (all if None)."""
        requeued = failed = 0
        for consumer in self._consumers(endpoint_id):
            if consumer == keep_session:
                continue
            pairs = self._pending(endpoint_id, consumer)
            r, f = self._requeue_pairs(endpoint_id, pairs, count_attempt=True)
            requeued, failed = requeued + r, failed + f
            self._delconsumer(args=[f"fc:ep:{endpoint_id}:q", consumer])
        return requeued, failed

    def maintenance(self) -> dict:
        """Reclaim the leases of silent endpoints; run by RQ every few seconds."""
        now = time.time()
        report = {"endpoints": 0, "reclaimed": 0, "failed": 0}
        for eid in self.all_endpoint_ids():
            last, session = self.redis.hmget(f"fc:ep:{eid}", "last_heartbeat", "session")
            report["endpoints"] += 1
            silent = last is None or now - float(last) > self.settings.heartbeat_timeout
            keep = None if silent else _s(session)
            if silent and session and not self._expire_session(
                    args=[eid, session, now - self.settings.heartbeat_timeout]):
                continue  # it spoke up meanwhile: look again at the next round
            r, f = self.reclaim(eid, keep_session=keep)
            report["reclaimed"] += r
            report["failed"] += f
        return report
