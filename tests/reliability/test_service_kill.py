"""SIGKILL the service's API processes (gunicorn master and workers) and its RQ worker under
load, twice; the service's supervisor restarts them. No task or result is lost, each task ends
exactly once, and background maintenance runs again afterwards."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import pytest
from fedcompute import Executor
from fedcompute.service.store import keys
from rq import Queue

from .agent_api import FakeAgent
from .helpers import (
    assert_exactly_once,
    executions,
    kill_pids,
    process_tree,
    report,
    running_stack,
    service_redis,
    wait_for,
    work,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

N = 3000
MS = 3


def _kill_api_and_worker(stack) -> dict[str, int]:
    before = stack.service_children()
    api = [p.pid for p in process_tree(before["api"])]  # the gunicorn master and its workers
    kill_pids([*api, before["worker"]])
    # The supervisor notices within a second and starts new ones.
    after = wait_for(lambda: (c := stack.service_children()).keys() >= {"api", "worker"}
                     and c["api"] != before["api"] and c["worker"] != before["worker"] and c,
                     60, "the API and the RQ worker to be restarted")
    return after


def test_sigkill_api_and_rq_worker_under_load(tmp_path_factory):
    home = tmp_path_factory.mktemp("rel-service-kill")
    log_dir = home / "executions"
    log_dir.mkdir()
    # Small leases keep the agent leasing all the time, so the kills land mid-lease too.
    with running_stack(home, env={"FEDCOMPUTE_MAINTENANCE_INTERVAL": 1},
                       max_tasks_per_lease=100, max_outstanding=300,
                       engine={"type": "local", "workers": 2}) as stack:
        client = stack.client()
        ex = Executor(stack.endpoint_id, client=client)
        futures = [ex.submit(work, i, MS, str(log_dir)) for i in range(N)]
        expected = {f.task_id: 2 * i for i, f in enumerate(futures)}
        in_flight = []
        for fraction in (4, 2):
            wait_for(lambda f=fraction: sum(x.done() for x in futures) >= N // f, 300,
                     f"1/{fraction} of the tasks")
            in_flight.append(N - sum(f.done() for f in futures))
            _kill_api_and_worker(stack)
        killed_at = datetime.now(UTC)
        figures = assert_exactly_once(client, ex.task_group_id, futures, expected)
        ex.shutdown()
        assert set(executions(log_dir)) == set(range(N)), "some tasks never ran"
        # The restarted RQ worker runs the maintenance job again.
        queue = Queue("fedcompute", connection=service_redis(stack))

        def maintenance_ran() -> bool:
            jobs = queue.finished_job_registry.get_job_ids()
            return any((job := queue.fetch_job(j)) is not None and job.ended_at is not None
                       and job.ended_at.replace(tzinfo=UTC) > killed_at for j in jobs)

        wait_for(maintenance_ran, 60, "a maintenance job run by the restarted RQ worker")
        # Nothing is left leased or queued for the endpoint.
        status = client.get_endpoint_status(stack.endpoint_id)
        assert (status["queued"], status["leased"]) == (0, 0)
        runs = executions(log_dir)
        log = stack.endpoint_log()
        report("service API + RQ worker SIGKILLed twice under load", in_flight=max(in_flight),
               reran=sum(1 for n in runs.values() if n > 1),
               lost_lease_replies_recovered=log.count("whose lease reply was lost"),
               spooled_batches=log.count("spooled to disk"), **figures)


def double(x):
    return 2 * x


def test_rq_worker_killed_mid_maintenance_does_not_stop_maintenance(tmp_path_factory):
    """The RQ worker dies in the middle of a maintenance run: that run stays "started" in RQ
    for minutes. Maintenance must carry on anyway, or silent endpoints' tasks wait unclaimed."""
    env = {"FEDCOMPUTE_MAINTENANCE_INTERVAL": 0.2, "FEDCOMPUTE_HEARTBEAT_TIMEOUT": 3}
    with running_stack(tmp_path_factory.mktemp("rel-rq-kill"), env=env,
                       endpoint=False) as stack:
        r = service_redis(stack)
        # Many endpoints gone silent make a maintenance run last seconds (it reads only the
        # silent end of the sign-of-life index: idle online endpoints would cost it nothing).
        r.zadd(keys.endpoint_beats(), {str(uuid.uuid4()): time.time() - 3600
                                       for _ in range(20_000)})
        queue = Queue("fedcompute", connection=r)
        registry = queue.started_job_registry
        worker = stack.service_children()["worker"]
        started = wait_for(lambda: registry.get_job_ids(), 60, "a maintenance run in progress",
                           interval=0.002)
        kill_pids([p.pid for p in process_tree(worker)])  # the worker and its work horse
        wait_for(lambda: stack.service_children().get("worker") not in (None, worker), 60,
                 "the RQ worker to be restarted")
        abandoned = queue.fetch_job(started[0])
        assert abandoned.get_status() in ("queued", "started"), "RQ still has it running"
        # An endpoint leases a task, then goes silent: maintenance must still reclaim it.
        client = stack.client()
        reg = client.register_endpoint("goes-silent")
        fid = client.register_function(double)
        task_id = client.run(1, endpoint_id=reg["endpoint_id"], function_id=fid)
        agent = FakeAgent(stack.service_url, reg["credential"])
        agent.connect()
        assert [t["task_id"] for t in agent.lease(wait=5)["tasks"]] == [task_id]
        wait_for(lambda: client.get_task(task_id)["attempts"] == 1, 60,
                 "maintenance to reclaim the silent endpoint's lease")
