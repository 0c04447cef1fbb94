"""Tasks, task groups and results: submission, records, cancellation, result streams."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import redis
from fedcompute import errors, serialize
from fedcompute.protocol import TaskResult, TaskSpec, packb, unpackb

from . import keys
from .cache import Cache
from .records import text
from .scripts import Scripts
from .wakeups import Wakeups

TASK_FIELDS = ("state", "function", "endpoint", "group", "attempts", "completed", "result", "exc",
               "stdout", "stderr", "owner", "worker")
TIMESTAMP_STATES = ("received", "waiting-for-endpoint", "leased", "waiting-for-nodes", "running",
                    "success", "failed", "cancelled", "completed")
#: How long a result poll woken only by state events waits for a result to answer with them:
#: a state shows this much later in ``ComputeFuture.status()``, and a short task's events and
#: result come in one answer instead of two.
EVENT_HOLD = 0.025


def _packed_or_empty(value: Any) -> bytes:
    return packb(value) if value else b""


def task_record(task_id: str, values: list) -> dict | None:
    """A task hash (as read with TASK_FIELDS and the timestamps) as the API shows it."""
    if values[0] is None:
        return None
    (state, function, endpoint, group, attempts, completed, result, exc, stdout, stderr,
     owner, worker) = values[:len(TASK_FIELDS)]
    stamps = {s: float(v) for s, v in zip(TIMESTAMP_STATES, values[len(TASK_FIELDS):],
                                           strict=True) if v is not None}
    record = {"task_id": task_id, "status": state.decode(), "function_id": text(function),
              "endpoint_id": text(endpoint), "task_group_id": text(group),
              "attempts": int(attempts or 0), "timestamps": stamps,
              "completed": completed == b"1", "owner": text(owner),
              "worker": json.loads(worker) if worker else None}
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


def expire_after(task_ttl: float, maintenance_interval: float) -> float:
    """Seconds after submission when an unfinished task fails with ``TaskExpired``: before
    Redis drops its record (``task_ttl``), by a tenth of it (at most an hour, and at least three
    maintenance rounds), so that its submitter learns how it ended."""
    return max(task_ttl - max(min(3600.0, task_ttl / 10), 3 * maintenance_interval), 0.0)


class Tasks:
    def __init__(self, client: redis.Redis, wakeups: Wakeups, scripts: Scripts,
                 task_ttl: int, result_ttl: int, maintenance_interval: float = 5.0, *,
                 cache: Cache):
        self.redis = client
        self.wakeups = wakeups
        self.cache = cache
        self.scripts = scripts
        self.task_ttl = task_ttl
        self.expire_after = expire_after(task_ttl, maintenance_interval)
        self.result_ttl = result_ttl

    def submit(self, owner: str, endpoint_id: str, group: str, tasks: list[TaskSpec]) -> int:
        """Write a batch in one script: records, queue entries, group membership. Returns
        how many were already known (a resent batch); PermissionError if another user owns
        the group or a task id."""
        task_keys = [keys.task(t.task_id) for t in tasks]
        argv: list[Any] = [owner, endpoint_id, group, time.time(), self.task_ttl,
                           self.expire_after]
        for t in tasks:
            deadline = (t.options or {}).get("deadline")
            argv += [t.task_id, t.function_id, t.payload,
                     _packed_or_empty(t.resource_specification), _packed_or_empty(t.options),
                     "" if deadline is None else float(deadline)]
        dup, error = self.scripts.durably(
            "submit", keys=[keys.queue(endpoint_id), keys.group(group), keys.group_tasks(group),
                  keys.user_groups(owner), *task_keys], args=argv)
        if dup == -1:
            raise PermissionError(error.decode())
        self.wakeups.notify([keys.wake_queue(endpoint_id)])
        return int(dup)

    def get_tasks(self, task_ids: list[str]) -> list[dict | None]:
        pipe = self.redis.pipeline(transaction=False)
        for tid in task_ids:
            pipe.hmget(keys.task(tid), *TASK_FIELDS, *(f"t_{s}" for s in TIMESTAMP_STATES))
        return [task_record(tid, values) for tid, values in
                zip(task_ids, pipe.execute(), strict=True)]

    def task_owner(self, task_id: str) -> str | None:
        return text(self.redis.hget(keys.task(task_id), "owner"))

    def cancel(self, task_id: str, envelope: bytes) -> str:
        """Cancel a task no agent holds yet; returns its state afterwards."""
        return self.scripts.cancel(keys=[keys.task(task_id)],
                                   args=[task_id, time.time(), self.result_ttl,
                                         envelope]).decode()

    def task_owners(self, task_ids: list[str]) -> list[str | None]:
        pipe = self.redis.pipeline(transaction=False)
        for tid in task_ids:
            pipe.hget(keys.task(tid), "owner")
        return [text(o) for o in pipe.execute()]

    def fail_endpoint_tasks(self, endpoint_id: str, error: str, message: str) -> int:
        """Fail every task of the endpoint that has not ended (in its queue: waiting, or held
        by its agent) with the fedcompute error named ``error``; how many there were."""
        envelope = packb(serialize.error_envelope(getattr(errors, error), message))
        queue, start, failed = keys.queue(endpoint_id), "-", 0
        while True:
            page = self.redis.xrange(queue, start, "+", count=1000)
            if not page:
                return failed
            pipe = self.redis.pipeline(transaction=False)
            now = time.time()
            for _, fields in page:
                tid = fields[b"t"].decode()
                self.scripts.fail(keys=[keys.task(tid)],
                                  args=[tid, now, self.result_ttl, envelope], client=pipe)
            failed += sum(1 for s in pipe.execute() if s == b"failed")
            start = "(" + page[-1][0].decode()  # after it (it is deleted by now)

    def end_overdue(self, limit: int = 1000) -> dict[str, int]:
        """Fail the tasks overdue on the endings index: not started by their deadline
        (``DeadlineExceeded``), or not ended when their record is about to expire
        (``TaskExpired``). Returns how many of each."""
        now = time.time()
        due = [t.decode() for t in self.redis.zrangebyscore(keys.endings(), "-inf", now,
                                                            start=0, num=limit)]
        if not due:
            return {"deadline": 0, "expired": 0}
        late = packb(serialize.error_envelope(
            errors.DeadlineExceeded, "task did not start by its deadline"))
        expired = packb(serialize.error_envelope(
            errors.TaskExpired, f"task had not ended {self.expire_after:.0f}s after it was "
                                "submitted; its record would expire soon (the service's "
                                "task_ttl)"))
        pipe = self.redis.pipeline(transaction=False)
        for tid in due:
            self.scripts.overdue(keys=[keys.task(tid)], args=[
                tid, now, self.result_ttl, self.expire_after, late, expired], client=pipe)
        outcomes = [o.decode() for o in pipe.execute()]
        return {"deadline": outcomes.count("deadline"), "expired": outcomes.count("expired")}

    def cancel_many(self, task_ids: list[str], envelope: Callable[[str], bytes]
                    ) -> dict[str, str]:
        """:meth:`cancel` for many tasks in one round trip; task id -> state afterwards."""
        pipe = self.redis.pipeline(transaction=False)
        now = time.time()
        for tid in task_ids:
            self.scripts.cancel(keys=[keys.task(tid)],
                                args=[tid, now, self.result_ttl, envelope(tid)], client=pipe)
        return {tid: s.decode() for tid, s in zip(task_ids, pipe.execute(), strict=True)}

    def store_results(self, endpoint_id: str, results: list[TaskResult], session: str = ""
                      ) -> tuple[int, int]:
        """Store an endpoint's finished tasks (reported by agent ``session``, whose sign of
        life they are); returns (stored, duplicates)."""
        argv: list[Any] = [endpoint_id, time.time(), self.result_ttl, session]
        for r in results:
            exc = r.exception.model_dump() if r.exception is not None else None
            argv += [r.task_id, r.status, r.result or b"", _packed_or_empty(exc),
                     r.stdout or "", r.stderr or "", r.timings.get("started", "")]
        stored, dup, woken = self.scripts.durably(
            "results", keys=[keys.queue(endpoint_id), keys.endpoint(endpoint_id),
                             keys.endpoint_beats(), *(keys.task(r.task_id) for r in results)],
            args=argv)
        self.wakeups.notify(c.decode() for c in woken)
        return int(stored), int(dup)

    def mark(self, endpoint_id: str, state: str, task_ids: list[str],
             workers: dict[str, dict] | None = None) -> int:
        """Leased tasks of this endpoint now wait for nodes, or run (on ``workers[task_id]``:
        host, pid)."""
        workers = workers or {}
        return int(self.scripts.mark(keys=[keys.task(t) for t in task_ids], args=[
            state, time.time(), endpoint_id,
            *(json.dumps(workers[t]) if t in workers else "" for t in task_ids)]))

    # --- task groups -------------------------------------------------------------------

    def claim_group(self, group: str, owner: str) -> bool:
        """Make ``owner`` the owner of a task group unless another user owns it already."""
        key = keys.group(group)
        pipe = self.redis.pipeline()
        pipe.hsetnx(key, "owner", owner)
        pipe.expire(key, self.task_ttl)
        pipe.hget(key, "owner")
        return text(pipe.execute()[-1]) == owner

    def group_owner(self, group: str) -> str | None:
        key = keys.group(group)

        def load() -> str | None:
            return text(self.redis.hget(key, "owner"))

        # A group's owner never changes (only the first submitter claims it): checked on
        # every result poll, it is read once. A group not created yet is not remembered.
        return self.cache.get(key, load)

    def group_counts(self, group: str) -> dict[str, int]:
        """How many of the group's tasks are in each state (kept by the scripts as states
        change: cheap for any group size)."""
        return {k.decode(): int(v) for k, v in self.redis.hgetall(keys.group_counts(group)).items()
                if int(v) > 0}

    def groups_of(self, user: str, offset: int = 0, limit: int = 50) -> list[tuple[str, float]]:
        """A user's task groups, most recently submitted to first: (group id, when)."""
        return [(g.decode(), float(t)) for g, t in self.redis.zrevrange(
            keys.user_groups(user), offset, offset + limit - 1, withscores=True)]

    def group_page(self, group: str, offset: int, limit: int) -> list[dict]:
        """Records of the group's tasks ``offset`` to ``offset + limit`` (submission order):
        pages of a group of any size."""
        ids = [t.decode() for t in self.redis.lrange(keys.group_tasks(group), offset,
                                                     offset + limit - 1)]
        return [r for r in self.get_tasks(ids) if r is not None]

    def group_size(self, group: str) -> int:
        return int(self.redis.llen(keys.group_tasks(group)))

    def group_task_ids_page(self, group: str, offset: int, limit: int) -> list[str]:
        return [t.decode() for t in self.redis.lrange(keys.group_tasks(group), offset,
                                                      offset + limit - 1)]

    def group_task_ids(self, group: str) -> list[str]:
        return [t.decode() for t in self.redis.lrange(keys.group_tasks(group), 0, -1)]

    def read_results(self, group: str, cursor: str, wait: float, limit: int,
                     with_events: bool = False) -> tuple:
        """Long-poll a task group's result stream after ``cursor``: its next finished tasks'
        records (one script reads the stream and the records) and, ``with_events``, its state
        events (``{"state", "task_ids", "at"}``: tasks leased, waiting for nodes, running) and
        live output (``{"task_id", "seq", "stream", "text", "at"}``).
        Returns ``(cursor, records)`` or ``(cursor, records, events, output)``."""
        stream = keys.group_results(group)
        fields = [*TASK_FIELDS, *(f"t_{s}" for s in TIMESTAMP_STATES)]

        got: list = [cursor.encode(), [], [], []]  # everything read so far

        channel = keys.wake_results(group)

        def read() -> list | None:
            token = self.wakeups.arm(channel)
            count = limit - len(got[2])
            *reply, entries = self.scripts.read_results(keys=[stream],
                                                        args=[got[0], count, *fields])
            if int(entries) < count:  # the stream holds nothing more: the next poll knows
                self.wakeups.settle(channel, token, reply[0].decode())
            if not (reply[1] or reply[2] or reply[3]):
                return None
            got[0] = reply[0]
            for mine, more in zip(got[1:], reply[1:], strict=True):
                mine.extend(more)
            return got

        def only_events(reply: list) -> bool:
            # A poll woken by state events alone waits a little for a result to share its
            # answer (a short task's "leased" and its result are a few ms apart). One that
            # does not want events reads past them and waits on for records.
            return not (reply[1] or reply[3]) and len(reply[2]) < limit

        reply = self.wakeups.poll(read, channel, wait, partial=only_events,
                                  hold=EVENT_HOLD if with_events else wait,
                                  skip_first=lambda: self.wakeups.quiet(channel, cursor))
        if not reply:
            return (cursor, [], [], []) if with_events else (cursor, [])
        last, rows, raw_events, raw_output = reply
        records = [r for r in (task_record(row[0].decode(), row[1:]) for row in rows)
                   if r is not None]
        if not with_events:
            return last.decode(), records
        events = [{"state": s.decode(), "task_ids": ids.decode().split(",") if ids else [],
                   "at": float(at)} for s, ids, at in raw_events]
        output = [{"task_id": t.decode(), "seq": int(seq), "stream": s.decode(),
                   "text": x.decode(errors="replace"), "at": float(at)}
                  for t, seq, s, x, at in raw_output]
        return last.decode(), records, events, output

    def add_output(self, endpoint_id: str, batches: list[dict], limit: int) -> int:
        """Live output batches of running tasks held by this endpoint, onto their groups'
        result streams (at most ``limit`` bytes a task). Returns how many were kept."""
        if not batches:
            return 0
        args: list[Any] = [time.time(), endpoint_id, limit]
        for batch in batches:
            args += [batch["seq"], json.dumps(batch["items"])]
        return int(self.scripts.output(keys=[keys.task(b["task_id"]) for b in batches],
                                       args=args))
