"""The object a console page is about, looked up with the service's access rules
(``service.access``): another user's object answers 404, as if it did not exist."""

from __future__ import annotations

from ..access import owned, usable
from ..api import uuid_arg
from ..context import fed


def visible_endpoint(endpoint_id: str, user: str) -> dict:
    """An endpoint ``user`` may use (owned, shared with them or public)."""
    endpoint_id = uuid_arg(endpoint_id, "endpoint id")
    return usable(fed().store.get_endpoint(endpoint_id), user, f"endpoint {endpoint_id}")


def visible_function(function_id: str, user: str) -> dict:
    """A function ``user`` may use (owned, shared with them or public)."""
    function_id = uuid_arg(function_id, "function id")
    return usable(fed().store.get_function(function_id), user, f"function {function_id}")


def owned_group(group: str, user: str) -> str:
    """The id of a task group of ``user``."""
    group = uuid_arg(group, "task group id")
    owned({"owner": fed().store.group_owner(group)}, user, f"task group {group}")
    return group


def owned_task(task_id: str, user: str) -> dict:
    """The record of a task of ``user``."""
    task_id = uuid_arg(task_id, "task id")
    return owned(fed().store.get_tasks([task_id])[0], user, f"task {task_id}")


def owned_task_id(task_id: str, user: str) -> str:
    """The id of a task of ``user`` (without reading its record)."""
    task_id = uuid_arg(task_id, "task id")
    owned({"owner": fed().store.task_owner(task_id)}, user, f"task {task_id}")
    return task_id
