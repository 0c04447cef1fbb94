"""The agent's side of the fast lane: one connection per worker's lane, tasks sent as the
lanes have room, results and "started" events read back.

A lane takes about ``DEPTH`` tasks per executor at a time, so its executors never wait for
the next one while the agent holds the rest (the backlog) and sends as results come back.
When the backlog is empty and a lane has an idle executor while another holds tasks it has not
started (a short task queued behind a long one), the agent takes half of those back and
sends them to the idle lane: work stealing, as Dask's scheduler does between workers. If
a lane's connection drops (its worker died or was retired), the tasks it held go back to the
dispatcher, which reruns them on the Dask path: a task that kills its worker fails there, the
others run again.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from ..lane.frames import SocketFrames
from ..lane.server import lane_address
from ..records import LeasedTask, TaskResult

log = logging.getLogger(__name__)

#: Tasks a lane holds per executor: enough to keep it busy between frames.
DEPTH = 16


class Lane:
    def __init__(self, pool: LanePool, worker: str, address: str):
        self.pool = pool
        self.worker = worker
        self.address = address
        host, _, port = address.rpartition(":")
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.frames = SocketFrames(sock)
        self.frames.send({"op": "hello", "secret": pool.secret})
        welcome = self.frames.recv()
        if not welcome or welcome.get("op") != "welcome":
            raise ConnectionError(f"lane {address} refused the connection")
        self.executors = int(welcome.get("executors") or 1)
        self.capacity = DEPTH * self.executors
        self.held: dict[str, LeasedTask] = {}
        self.seceded: set[str] = set()  # held tasks whose slot a spare executor took
        self.stopping: set[str] = set()  # held tasks asked to stop
        self.stealing = False  # asked to give back tasks it has not started; no reply yet
        self.dry = False  # its last steal returned nothing: not asked again before a result
        self.sent_functions: set[str] = set()
        self.alive = True
        threading.Thread(target=self._read, daemon=True, name="fedcompute-lane-reader").start()

    @property
    def room(self) -> int:
        return self.capacity + len(self.seceded) - len(self.held) if self.alive else 0

    @property
    def waiting(self) -> int:
        """Held tasks beyond what its executors run: queued in the lane, not started."""
        return len(self.held) - len(self.seceded) - self.executors

    def send(self, tasks: list[LeasedTask], bodies: dict[str, bytes]) -> None:
        for t in tasks:
            self.held[t.task_id] = t
        new = {fid: body for fid, body in bodies.items() if fid not in self.sent_functions}
        self.sent_functions |= set(new)
        self.frames.send({"op": "run", "tasks": [t.lane_wire() for t in tasks],
                          "bodies": new})

    def _read(self) -> None:
        try:
            while (frame := self.frames.recv()) is not None:
                self.pool.on_frame(self, frame)
        except (OSError, ValueError) as exc:
            log.info("lane %s: %s", self.address, exc)
        finally:
            self.pool.on_lost(self)


class LanePool:
    """The lanes of the engine's workers."""

    def __init__(self, client: Any, secret: str, bodies: Callable[[str], bytes | None],
                 finished: Callable[[list[TaskResult]], None],
                 started: Callable[[list[str], str, int], None],
                 lost: Callable[[list[LeasedTask]], None]):
        self.client = client
        self.secret = secret
        self.bodies = bodies
        self.finished = finished
        self.started = started
        self.lost = lost
        #: Called with live output batches of running tasks (``stream_output``).
        self.output: Callable[[list[dict]], None] = lambda batches: None
        self.lock = threading.Lock()
        self.lanes: dict[str, Lane] = {}     # worker address -> lane
        self.backlog: deque[LeasedTask] = deque()

    def available(self) -> bool:
        with self.lock:
            return any(lane.alive for lane in self.lanes.values())

    def refresh(self) -> None:
        """Connect to the lanes of workers that joined (``Client.run``), forget the others."""
        try:
            addresses = self.client.run(lane_address)
        except Exception as exc:  # noqa: BLE001 - workers coming and going: next round
            log.debug("finding lanes failed: %s", exc)
            return
        with self.lock:
            known = set(self.lanes)
        for worker, address in addresses.items():
            if address and worker not in known:
                try:
                    lane = Lane(self, worker, address)
                except OSError as exc:
                    log.warning("cannot connect to the lane of %s: %s", worker, exc)
                    continue
                with self.lock:
                    self.lanes[worker] = lane
                log.info("lane of worker %s connected (%d slots)", worker, lane.capacity)
        self.pump()

    def submit(self, tasks: list[LeasedTask]) -> None:
        with self.lock:
            self.backlog.extend(tasks)
        self.pump()

    def pump(self) -> None:
        """Send backlog tasks to lanes with room (the emptiest first)."""
        while True:
            with self.lock:
                lanes = sorted((lane for lane in self.lanes.values() if lane.room > 0),
                               key=lambda lane: -lane.room)
                if not lanes or not self.backlog:
                    victim = self._victim() if not self.backlog else None
                    if victim is None:
                        return
                    victim.stealing = True
                    break
                lane = lanes[0]
                batch = [self.backlog.popleft()
                         for _ in range(min(lane.room, len(self.backlog)))]
                bodies = {t.function_id: self.bodies(t.function_id) for t in batch}
                try:
                    lane.send(batch, bodies)
                except OSError:
                    lane.alive = False
                    self.backlog.extendleft(reversed(batch))
                    for t in batch:
                        lane.held.pop(t.task_id, None)
        try:
            victim.frames.send({"op": "steal", "n": max(1, victim.waiting // 2)})
        except OSError:
            victim.stealing = False

    def _victim(self) -> Lane | None:
        """With an idle executor somewhere and nothing in the backlog: the lane with the most
        tasks waiting behind its executors (under ``self.lock``)."""
        alive = [lane for lane in self.lanes.values() if lane.alive]
        if not any(lane.waiting < 0 for lane in alive):
            return None
        victims = [lane for lane in alive
                   if lane.waiting > 0 and not lane.stealing and not lane.dry]
        return max(victims, key=lambda lane: lane.waiting) if victims else None

    def on_frame(self, lane: Lane, frame: dict) -> None:
        results = [TaskResult.from_wire(r) for r in frame.get("results") or ()]
        if frame.get("started"):
            done = {r.task_id for r in results}  # finished already: the result says more
            started = [t for t, _ in frame["started"] if t not in done]
            if started:
                self.started(started, frame.get("host", ""), int(frame.get("pid") or 0))
        if frame.get("output"):  # before the results: a task's last lines come first
            self.output(frame["output"])
        if frame.get("seceded"):
            with self.lock:
                lane.seceded.update(t for t in frame["seceded"] if t in lane.held)
        if "returned" in frame:  # the reply to a steal: tasks it had not started
            with self.lock:
                lane.stealing = False
                back = [lane.held.pop(t) for t in frame["returned"] if t in lane.held]
                lane.dry = not back
                stopped = [t for t in back if t.task_id in lane.stopping]
                self.backlog.extendleft(reversed([t for t in back
                                                  if t.task_id not in lane.stopping]))
                lane.stopping.difference_update(t.task_id for t in back)
            if stopped:
                results += [TaskResult.cancelled(t.task_id) for t in stopped]
        if results:
            with self.lock:
                lane.dry = False
                for r in results:
                    lane.held.pop(r.task_id, None)
                    lane.seceded.discard(r.task_id)
                    lane.stopping.discard(r.task_id)
            self.finished(results)
        if results or frame.get("seceded") or "returned" in frame:
            self.pump()

    def on_lost(self, lane: Lane) -> None:
        with self.lock:
            lane.alive = False
            if self.lanes.get(lane.worker) is lane:
                del self.lanes[lane.worker]
            held = list(lane.held.values())
            lane.held.clear()
            lane.seceded.clear()
            lane.stopping.clear()
            # If no lane is left, the backlog goes the Dask way too.
            if not any(x.alive for x in self.lanes.values()):
                held += list(self.backlog)
                self.backlog.clear()
        if held:
            log.warning("lane of %s lost with %d tasks; rerunning them", lane.worker, len(held))
            self.lost(held)
        self.pump()

    def stop(self, task_ids: list[str], why: str = "cancel"
             ) -> tuple[list[str], list[LeasedTask]]:
        """Stop these tasks: a lane holding one stops it and reports it ``cancelled``.
        Returns the ids lanes hold, and the tasks taken out of the backlog (not sent yet:
        the caller reports those)."""
        wanted = set(task_ids)
        with self.lock:
            unsent = [t for t in self.backlog if t.task_id in wanted]
            self.backlog = deque(t for t in self.backlog if t.task_id not in wanted)
            by_lane = [(lane, [t for t in lane.held if t in wanted])
                       for lane in self.lanes.values()]
            for lane, ids in by_lane:
                lane.stopping.update(ids)
        found = []
        for lane, ids in by_lane:
            if ids:
                found += ids
                try:
                    lane.frames.send({"op": "stop", "task_ids": ids, "why": why})
                except OSError:
                    pass
        return found, unsent

    def close(self) -> None:
        with self.lock:
            lanes = list(self.lanes.values())
            self.lanes.clear()
        for lane in lanes:
            lane.alive = False
            lane.frames.close()
