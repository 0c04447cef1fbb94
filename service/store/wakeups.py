"""Long-polls that hold neither a Redis connection nor (under gevent) a thread.

The scripts PUBLISH on a *wake channel* when something a long-poll waits for happens (tasks
queued for an endpoint, results stored in a task group). Each API process keeps ONE pub/sub
connection, pattern-subscribed to every wake channel, and sets the events of the polls waiting
on that channel. A poll reads without blocking, and waits on its event only when there was
nothing to read: 10,000 idle agents cost 10,000 events, not 10,000 Redis connections.

Nothing is lost if a wake-up is: a poll registers before it reads (so a wake-up between its
read and its wait is kept), and reads again at least every ``RECHECK`` seconds anyway. When the
pub/sub connection drops (Redis restarting, a failover), every poll is woken to read again.

Two shortcuts on a task's way: a script run by this process wakes this process's polls at once
(:meth:`Wakeups.notify`, without waiting for its own message to come back), and a message
saying "state events only" (``e``) lets a result poll read them a moment later, with the result
that usually follows (:meth:`Wakeups.poll`'s ``hold``). And a poll that resumes where the last
one on its channel ended, with nothing published since, skips its first read
(:meth:`Wakeups.settle`): a result poll costs one read, not two.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import redis
from fedcompute.retry import Backoff

from . import keys

log = logging.getLogger(__name__)

#: A waiting poll reads again at least this often, whatever it was told.
RECHECK = 5.0

Handler = Callable[[str, bytes], None]
#: Result stream channels followed for :meth:`Wakeups.quiet` (the oldest forgotten first).
QUIET_LIMIT = 50_000


class Waiter:
    """One poll's wait on a channel: ``event`` is set by every message; ``news`` stays False
    while they all said "state events only" (``b"e"``)."""

    __slots__ = ("event", "news")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.news = False

    def wake(self, news: bool = True) -> None:
        self.news = self.news or news
        self.event.set()


class Wakeups:
    """The process's wake channel listener, started by the first poll."""

    def __init__(self, client: redis.Redis, stopping: threading.Event):
        self.redis = client
        self.stopping = stopping
        self._lock = threading.Lock()
        self._waiters: dict[str, set[Waiter]] = {}
        self._handlers: dict[str, Handler] = {}  # channel prefix -> handler(channel, data)
        # result stream wake channel -> [the last entry its messages announced, the cursor a
        # read found nothing past] (see arm(), settle()).
        self._tracked: dict[str, list] = {}
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._listen, daemon=True,
                                                name="fedcompute-wakeups")
                self._thread.start()

    def on(self, prefix: str, handler: Handler) -> None:
        """Call ``handler(channel, data)`` for messages on channels starting with ``prefix``
        (the relay's dial requests travel this way)."""
        self._handlers[prefix] = handler
        self.start()

    @contextmanager
    def waiting(self, channel: str) -> Iterator[Waiter]:
        """Woken whenever ``channel`` is published to, from now until the block ends."""
        self.start()
        waiter = Waiter()
        with self._lock:
            self._waiters.setdefault(channel, set()).add(waiter)
        try:
            yield waiter
        finally:
            with self._lock:
                waiters = self._waiters.get(channel)
                if waiters is not None:
                    waiters.discard(waiter)
                    if not waiters:
                        del self._waiters[channel]

    def arm(self, channel: str) -> list | None:
        """Before a read on ``channel`` (a result stream's): from now on, remember the last
        entry its messages announce. The token for :meth:`settle` (None while not
        listening: nothing can be known then)."""
        if not self.connected.is_set():
            return None
        with self._lock:
            track = self._tracked.get(channel)
            if track is None:
                track = self._tracked[channel] = [_ZERO, None]
                _bound(self._tracked)
            return track

    def settle(self, channel: str, token: list | None, cursor: str) -> None:
        """After a read armed with ``token`` found nothing past ``cursor``. Anything written
        after the read announces an entry past ``cursor``, in a message that arrives here
        after :meth:`arm`: until one does, a read from ``cursor`` would find nothing."""
        with self._lock:
            if token is not None and self._tracked.get(channel) is token:
                token[1] = _entry(cursor)

    def quiet(self, channel: str, cursor: str) -> bool:
        """Nothing past ``cursor`` on ``channel`` (see :meth:`settle`): a read would find
        nothing. Asked once the poll is waiting, so no message can fall in between."""
        with self._lock:
            track = self._tracked.get(channel)
            return (track is not None and track[1] is not None
                    and track[1] == _entry(cursor) and track[0] <= track[1])

    def notify(self, channels: Iterable[str]) -> None:
        """Wake this process's polls on ``channels`` now, then let them run: a script run
        from here published to them, and its message would take a pub/sub round trip to come
        back (the other processes' polls wake that way)."""
        with self._lock:
            woken = [w for c in channels for w in self._waiters.get(c, ())]
        for waiter in woken:
            waiter.wake()
        if woken:
            time.sleep(0)  # under gevent: the woken polls start reading before we answer

    def wake_all(self) -> None:
        """Wake every waiting poll (the process stops, or wake-ups may have been missed)."""
        with self._lock:
            self._tracked.clear()
            woken = [w for waiters in self._waiters.values() for w in waiters]
        for waiter in woken:
            waiter.wake()

    def poll(self, read: Callable[[], Any], channel: str, wait: float,
             recheck: float = RECHECK, partial: Callable[[Any], bool] | None = None,
             hold: float = 0.0, skip_first: Callable[[], bool] | None = None) -> Any:
        """``read()`` until it returns something, ``wait`` seconds are over or we stop.

        It reads when it starts, when woken, and every ``recheck`` seconds; not at the end of
        ``wait`` unless woken: nothing was published meanwhile, and the caller polls again
        anyway. (With 10,000 idle agents each read is a Lua call: a read at the end and every
        5 s were 4 of every 5 of the service's Redis calls.)

        With ``partial``, a reply it calls incomplete (state events only) is kept for up to
        ``hold`` seconds more while ``read()`` (which then answers with everything so far, or
        nothing new) is given the chance of a complete one, and wake-ups saying "state events
        only" are read at the end of the hold, together: a short task's events and its result
        make one answer and one read, not three.

        ``skip_first()`` True (asked once the poll is waiting): the first read would find
        nothing (see :meth:`quiet`), so the poll only waits."""
        deadline = time.monotonic() + wait
        held = None
        unread = False  # state events announced and not read yet
        holding = False
        with self.waiting(channel) as waiter:
            reply = None if skip_first is not None and skip_first() else read()
            while not self.stopping.is_set():
                if reply:
                    if partial is None or not partial(reply):
                        return reply
                    held = reply
                if (held or unread) and not holding:
                    holding = True
                    deadline = min(deadline, time.monotonic() + hold)
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                woken = waiter.event.wait(min(left, recheck))
                waiter.event.clear()
                news, waiter.news = waiter.news, False
                if woken and partial is not None and not news:
                    unread, reply = True, None
                    continue
                reply = None
                if woken or left > recheck:
                    reply, unread = read(), False
            if unread and not self.stopping.is_set():
                reply = read()
            return reply or held

    def _listen(self) -> None:
        backoff = Backoff(0.1, 5.0)
        while not self.stopping.is_set():
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.psubscribe(keys.wake("*"))
                self.connected.set()
                backoff.reset()
                # Whatever happened while we were not listening: everyone reads again.
                self.wake_all()
                while not self.stopping.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._deliver(message["channel"].decode(), message["data"])
            except Exception as exc:  # noqa: BLE001 - whatever broke it, listen again
                if self.stopping.is_set():
                    return
                log.warning("wake-up channel lost (%s); reconnecting", exc)
            finally:
                self.connected.clear()
                try:
                    pubsub.close()
                except Exception:  # noqa: BLE001 - the connection is gone anyway
                    pass
            self.wake_all()
            backoff.wait(self.stopping)

    def _deliver(self, channel: str, data: bytes) -> None:
        news = not data.startswith(b"e")
        with self._lock:
            track = self._tracked.get(channel)
            if track is not None:
                try:
                    track[0] = max(track[0], _entry((data[1:] if not news else data).decode()))
                except ValueError:  # no entry named: anything may have been written
                    del self._tracked[channel]
            waiters = list(self._waiters.get(channel, ()))
        for waiter in waiters:
            waiter.wake(news)
        for prefix, handler in list(self._handlers.items()):
            if channel.startswith(prefix):
                try:
                    handler(channel, data)
                except Exception:  # noqa: BLE001 - one bad handler must not stop the others
                    log.exception("wake-up handler for %s failed", prefix)


_ZERO = (0, 0)


def _entry(entry_id: str) -> tuple[int, int]:
    """A stream entry id (``ms-seq``, or ``0``), comparable (ValueError if not one)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _bound(remembered: dict) -> None:
    while len(remembered) > QUIET_LIMIT:
        del remembered[next(iter(remembered))]
