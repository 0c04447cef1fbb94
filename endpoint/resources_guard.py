"""A scheduler plugin that fails at once a Dask task whose resources no worker of the endpoint
has, nor any worker its engine would add (Dask alone would wait for ever, silently)."""

from __future__ import annotations

import logging
import time
from contextlib import suppress
from typing import Any

from distributed.core import error_message
from distributed.diagnostics.plugin import SchedulerPlugin

log = logging.getLogger(__name__)

__all__ = ["ResourcesGuard", "ResourcesUnavailable", "engine_worker_resources"]


class ResourcesUnavailable(RuntimeError):
    """No worker of the endpoint has, or could be added with, the resources a task asks for."""


def _satisfies(offer: dict, need: dict) -> bool:
    return all(offer.get(name, 0) >= amount for name, amount in need.items())


def engine_worker_resources(engine: Any) -> list[dict]:
    """Resources of the workers the engine would add: its ``resources`` (local) or
    ``worker_resources`` (batch) option, and the cluster manager's worker template."""
    offers = []
    options = getattr(engine, "options", None) or {}
    for key in ("resources", "worker_resources"):
        if isinstance(options.get(key), dict) and options[key]:
            offers.append(dict(options[key]))
    template = getattr(getattr(engine, "cluster", None), "new_spec", None)
    if isinstance(template, dict) and isinstance(template.get("options"), dict):
        resources = template["options"].get("resources")
        if isinstance(resources, dict) and resources:
            offers.append(dict(resources))
    return offers


class ResourcesGuard(SchedulerPlugin):
    """Errs a task at once when its resource restrictions (``resources={"GPU": 1}``, or a
    fedcompute task's ``resource_specification``) can never be met: no current worker offers
    them and no worker the engine adds would (Dask itself would wait for ever, silently).

    A task waits as usual while some worker could take it, including workers an adaptive batch
    engine has not started yet (their ``worker_resources``).
    """

    name = "fedcompute-resources-guard"

    def __init__(self, engine: Any):
        self.engine = engine
        self.scheduler: Any = None

    async def install(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        scheduler.add_plugin(self, name=self.name, idempotent=True)

    def uninstall(self, scheduler: Any) -> None:
        with suppress(ValueError, KeyError):
            scheduler.remove_plugin(name=self.name)

    def transition(self, key: Any, start: str, finish: str, *args: Any,
                   stimulus_id: str | None = None, **kwargs: Any) -> None:
        if finish != "no-worker" or self.scheduler is None:
            return
        ts = self.scheduler.tasks.get(key)
        if ts is not None and ts.resource_restrictions:
            # Not from inside the scheduler's transition loop: on its next turn.
            self.scheduler.loop.add_callback(self._check, key)

    def offers(self) -> list[dict]:
        """Resources of every current worker and of the workers the engine would add."""
        current = [dict(ws.resources) for ws in self.scheduler.workers.values()]
        return current + engine_worker_resources(self.engine)

    def _check(self, key: Any) -> None:
        ts = self.scheduler.tasks.get(key)
        if ts is None or ts.state != "no-worker" or not ts.resource_restrictions:
            return
        need = dict(ts.resource_restrictions)
        offers = self.offers()
        if any(_satisfies(offer, need) for offer in offers):
            return
        seen = sorted({repr(o) for o in offers if o}) or ["no resources"]
        exc = ResourcesUnavailable(
            f"no worker of this endpoint has resources {need}, and none it would add has: "
            f"its workers offer {', '.join(seen)}. Give the workers those resources in the "
            "endpoint's config.yaml (engine: resources: for the local engine, "
            "worker_resources: for batch systems), or ask for less.")
        msg = error_message(exc)
        stimulus_id = f"fedcompute-resources-unavailable-{time.time()}"
        recommendations = self.scheduler.transition(
            key, "erred", stimulus_id, cause=key, exception=msg["exception"],
            traceback=msg["traceback"], exception_text=msg["exception_text"],
            traceback_text=msg["traceback_text"])
        self.scheduler.transitions(recommendations, stimulus_id)
        log.info("task %s erred: %s", key, exc)
