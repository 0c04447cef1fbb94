"""What the web console reads and writes beyond the API's parts: its sessions, light views of
a user's functions and task groups, and bounded samples of a group.

Reads here fetch only the fields a page shows (never task payloads or results), so a page
of a 100,000-task group costs the same as a page of a small one.
"""

from __future__ import annotations

import time

import redis

from . import keys
from .records import sharing, text
from .tasks import TIMESTAMP_STATES

#: Task states after which nothing changes.
FINAL_STATES = ("success", "failed", "cancelled")
#: States in which ``cancel`` stops a task: ends it at once, or (held by an agent: leased,
#: waiting for nodes, running) asks the endpoint to stop it.
CANCELLABLE_STATES = ("received", "waiting-for-endpoint", "leased", "waiting-for-nodes",
                      "running")
_LIGHT_FIELDS = ("state", "function", *(f"t_{s}" for s in TIMESTAMP_STATES))


def _light(task_id: str, values: list) -> dict | None:
    """A task's state, function and timestamps (no payload, result or output)."""
    if values[0] is None:
        return None
    stamps = {s: float(v) for s, v in zip(TIMESTAMP_STATES, values[2:], strict=True)
              if v is not None}
    return {"task_id": task_id, "status": values[0].decode(), "function_id": text(values[1]),
            "timestamps": stamps}


class Console:
    """Console sessions and the console's light, bounded reads."""

    def __init__(self, client: redis.Redis):
        self.redis = client

    # --- sessions ----------------------------------------------------------------------

    def create_session(self, session_hash: str, fields: dict[str, str | float],
                       idle: int) -> None:
        """Store a signed-in session (keyed by the hash of its cookie) for ``idle`` seconds."""
        key = keys.console_session(session_hash)
        pipe = self.redis.pipeline()
        pipe.hset(key, mapping={**fields, "created": time.time()})
        pipe.expire(key, idle)
        pipe.execute()

    def get_session(self, session_hash: str, idle: int) -> dict[str, str] | None:
        """The session's fields, its idle timer restarted; None if unknown or expired."""
        key = keys.console_session(session_hash)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(key)
        pipe.expire(key, idle)
        raw, _ = pipe.execute()
        if not raw or b"user" not in raw:
            return None
        return {k.decode(): v.decode(errors="replace") for k, v in raw.items()}

    def delete_session(self, session_hash: str) -> None:
        self.redis.delete(keys.console_session(session_hash))

    def set_flash(self, session_hash: str, message: str) -> None:
        """A message for the session's next page (shown once)."""
        self.redis.hset(keys.console_session(session_hash), "flash", message)

    def clear_flash(self, session_hash: str) -> None:
        self.redis.hdel(keys.console_session(session_hash), "flash")

    def open_stream(self, user: str, limit: int, lifetime: float) -> bool:
        """Count one more live stream of ``user``; False (nothing counted) past ``limit``.
        The counter expires by itself, so a process that died mid-stream frees its slots."""
        key = keys.console_streams(user)
        pipe = self.redis.pipeline()
        pipe.incr(key)
        pipe.expire(key, int(lifetime * 2) + 10)
        count, _ = pipe.execute()
        if count > limit:
            self.redis.decr(key)
            return False
        return True

    def close_stream(self, user: str) -> None:
        self.redis.decr(keys.console_streams(user))

    # --- a user's functions and tokens -------------------------------------------------

    def functions_of(self, user: str) -> list[dict]:
        """The functions ``user`` registered (no bodies), newest first."""
        ids = sorted(m.decode() for m in self.redis.smembers(keys.user_functions(user)))
        names = ("owner", "function_name", "description", "public", "shared_with",
                 "shared_with_groups", "created")
        pipe = self.redis.pipeline(transaction=False)
        for fid in ids:
            pipe.hmget(keys.function(fid), names)
        out = []
        for fid, values in zip(ids, pipe.execute(), strict=True):
            if values[0] is None:
                continue  # deleted or expired meanwhile
            rec = dict(zip(names, values, strict=True))
            out.append({"function_id": fid,
                        **sharing(rec["owner"], rec["public"], rec["shared_with"],
                                  rec["shared_with_groups"]),
                        "function_name": rec["function_name"].decode(errors="replace"),
                        "description": (rec["description"] or b"").decode(errors="replace"),
                        "created": float(rec["created"] or 0)})
        return sorted(out, key=lambda r: r["created"], reverse=True)

    def function_names(self, function_ids: list[str]) -> dict[str, dict]:
        """Name and sharing of each known function (for labels in task lists)."""
        ids = sorted(set(function_ids))
        pipe = self.redis.pipeline(transaction=False)
        for fid in ids:
            pipe.hmget(keys.function(fid), "owner", "public", "shared_with", "shared_with_groups",
                       "function_name")
        out = {}
        for fid, (owner, public, shared, groups, name) in zip(ids, pipe.execute(), strict=True):
            if owner is not None:
                out[fid] = {**sharing(owner, public, shared, groups),
                            "function_name": name.decode(errors="replace")}
        return out

    # --- task groups -------------------------------------------------------------------

    def group_summaries(self, groups: list[str]) -> list[tuple[int, dict[str, int]]]:
        """(size, counts by state) of each group, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for g in groups:
            pipe.llen(keys.group_tasks(g))
            pipe.hgetall(keys.group_counts(g))
        replies = pipe.execute()
        return [(int(replies[2 * i]),
                 {k.decode(): int(v) for k, v in replies[2 * i + 1].items() if int(v) > 0})
                for i in range(len(groups))]

    def light_tasks(self, task_ids: list[str]) -> list[dict | None]:
        """State, function and timestamps of each task (None if unknown)."""
        pipe = self.redis.pipeline(transaction=False)
        for tid in task_ids:
            pipe.hmget(keys.task(tid), *_LIGHT_FIELDS)
        return [_light(tid, values) for tid, values in zip(task_ids, pipe.execute(),
                                                              strict=True)]

    def group_light_page(self, group: str, offset: int, limit: int) -> list[dict]:
        """Light records of the group's tasks ``offset`` to ``offset + limit``."""
        ids = [t.decode() for t in self.redis.lrange(keys.group_tasks(group), offset,
                                                     offset + limit - 1)]
        return [r for r in self.light_tasks(ids) if r is not None]

    def group_sample(self, group: str, n: int) -> tuple[int, list[dict]]:
        """(group size, light records of up to ``n`` tasks spread evenly over the group): a
        systematic sample, the whole group when it has at most ``n`` tasks."""
        members = keys.group_tasks(group)
        size = int(self.redis.llen(members))
        if size <= n:
            ids = [t.decode() for t in self.redis.lrange(members, 0, -1)]
        else:
            pipe = self.redis.pipeline(transaction=False)
            for i in range(n):
                pipe.lindex(members, i * size // n)
            ids = [t.decode() for t in pipe.execute() if t is not None]
        return size, [r for r in self.light_tasks(ids) if r is not None]

    def results_cursor(self, group: str) -> str:
        """The id of the last entry of the group's result stream ("0" if none): a live view
        that starts here sees only what finishes from now on."""
        last = self.redis.xrevrange(keys.group_results(group), count=1)
        return last[0][0].decode() if last else "0"

    def finished_since(self, group: str, cursor: str, limit: int) -> tuple[str, list[dict]]:
        """The tasks that finished after ``cursor`` on the group's result stream, without
        waiting: (new cursor, their light records). Waiting is ``Tasks.read_results``'s job."""
        reply = self.redis.xread({keys.group_results(group): cursor}, count=limit)
        if not reply:
            return cursor, []
        entries = reply[0][1]
        # (State events share the stream, without a task id: they are skipped here.)
        ids = [fields[b"t"].decode() for _, fields in entries if b"t" in fields]
        return entries[-1][0].decode(), [r for r in self.light_tasks(ids) if r is not None]

    def cancellable_in(self, group: str, offset: int, limit: int) -> list[str]:
        """Ids of the tasks ``offset`` to ``offset + limit`` of the group not ended yet."""
        ids = [t.decode() for t in self.redis.lrange(keys.group_tasks(group), offset,
                                                     offset + limit - 1)]
        pipe = self.redis.pipeline(transaction=False)
        for tid in ids:
            pipe.hget(keys.task(tid), "state")
        return [tid for tid, state in zip(ids, pipe.execute(), strict=True)
                if state is not None and state.decode() in CANCELLABLE_STATES]
