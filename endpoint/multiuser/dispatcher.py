"""The multi-user manager's dispatcher: each leased task goes to the user process of its
submitter (``owner``) and its ``user_endpoint_config``; what cannot go anywhere fails with a
typed error the submitter sees as the task's exception.

Same interface as :class:`fedcompute.endpoint.agent.dispatcher.Dispatcher`, which runs in the
user processes themselves (packing, resources, walltime, worker deaths).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from fedcompute import errors

from ..agent.dispatcher import FunctionCache
from ..agent.ledger import Ledger
from ..config import EndpointConfig
from ..records import LeasedTask, TaskResult
from .errors import IdentityMappingError, UserConfigError, UserProcessError
from .processes import UserProcesses, config_key

log = logging.getLogger(__name__)


class MultiUserDispatcher:
    """Routes leased tasks to :class:`UserProcesses`; results go to ``finish``."""

    def __init__(self, engine: UserProcesses, config: EndpointConfig, ledger: Ledger,
                 functions: FunctionCache, finish: Callable[[list[TaskResult]], None],
                 mark: Callable[[str, list[str]], None], workers: Callable[[], int],
                 stopping: threading.Event):
        self.processes = engine
        self.config = config
        self.ledger = ledger
        self.functions = functions
        self.finish = finish
        self.stopping = stopping
        self.allowed = (set(config.allowed_functions) if config.allowed_functions is not None
                        else None)
        engine.attach(self._results, mark)
        #: Live output of running tasks (the agent sets it); the user processes send it here.
        self.on_output: Callable[[list[dict]], None] = lambda batches: None
        engine.on_output = lambda batches: self.on_output(batches)

    def dispatch(self, leased: list[LeasedTask]) -> list[LeasedTask]:
        """Route what was leased; returns the tasks dispatched (not already held)."""
        new = self.ledger.admit(t.task_id for t in leased)
        tasks = [t for t in leased if t.task_id in new]
        groups: dict[str, tuple[str, Any, list[LeasedTask]]] = {}
        for task in tasks:
            refusal = self._refusal(task)
            if refusal is not None:
                self.finish([TaskResult.failure(task.task_id, refusal)])
                continue
            user_config = (task.options or {}).get("user_endpoint_config")
            key = config_key(task.owner, user_config)
            groups.setdefault(key, (task.owner, user_config, []))[2].append(task)
        for owner, user_config, group in groups.values():
            bodies = {t.function_id: self.functions.get(t.function_id) for t in group}
            try:
                self.processes.submit(owner, user_config, group, bodies)
            except (IdentityMappingError, UserConfigError, UserProcessError) as exc:
                log.info("refused %d tasks of %r: %s", len(group), owner, exc)
                self._fail(group, exc)
            except Exception as exc:  # noqa: BLE001 - every task ends with a result
                log.exception("could not route %d tasks of %r", len(group), owner)
                self._fail(group, UserProcessError(
                    f"the endpoint could not start a user process for {owner!r}: "
                    f"{type(exc).__name__}: {exc}"))
        return tasks

    def _refusal(self, task: LeasedTask) -> BaseException | None:
        if self.allowed is not None and task.function_id not in self.allowed:
            return errors.FunctionNotAllowed(
                f"function {task.function_id} is not in this endpoint's allowed_functions")
        if self.functions.get(task.function_id) is None:
            return errors.SerializationError(
                f"function {task.function_id} body was not delivered to the endpoint")
        return None

    def _fail(self, tasks: list[LeasedTask], exc: BaseException) -> None:
        self.finish([TaskResult.failure(t.task_id, exc) for t in tasks])

    def _results(self, results: list[TaskResult]) -> None:
        self.finish(results)

    def cancel_all(self) -> None:
        """Cancel every task running in a user process (shutting down)."""
        self.processes.cancel_all()


__all__ = ["MultiUserDispatcher"]
