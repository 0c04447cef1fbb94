"""Every Redis key of the service, in one place (as rq keeps its key templates).

Python code calls the functions; Lua scripts get the keys they touch in ``KEYS``, or, for keys
they only find out while running (a task's group, an endpoint's queue), a template from
:data:`TEMPLATES` (``scripts.py`` writes them into each script) with ``{id}`` for the id.
"""

from __future__ import annotations

PREFIX = "fc:"
#: The consumer group of every endpoint queue: one consumer per agent session.
CONSUMER_GROUP = "agent"


def token(token_hash: str) -> str:
    """hash: kind (user|endpoint), name, created, label."""
    return f"{PREFIX}token:{token_hash}"


def user(name: str) -> str:
    """hash: created."""
    return f"{PREFIX}user:{name}"


def users() -> str:
    """set of user names."""
    return f"{PREFIX}users"


def user_tokens(name: str) -> str:
    """set of a user's token hashes (for revocation)."""
    return f"{PREFIX}user:{name}:tokens"


def user_functions(name: str) -> str:
    """set of the function ids a user registered."""
    return f"{PREFIX}user:{name}:functions"


def user_groups(name: str) -> str:
    """sorted set of a user's task groups, by last submission time."""
    return f"{PREFIX}user:{name}:groups"


def user_endpoints(name: str) -> str:
    """set of the endpoint ids a user registered."""
    return f"{PREFIX}user:{name}:endpoints"


def function(function_id: str) -> str:
    """hash: owner, function_name, body, description, public, shared_with, created."""
    return f"{PREFIX}fn:{function_id}"


def endpoint(endpoint_id: str) -> str:
    """hash: owner, name, sharing, credential hash, session, last_heartbeat, status."""
    return f"{PREFIX}ep:{endpoint_id}"


def endpoints() -> str:
    """set of every endpoint id."""
    return f"{PREFIX}endpoints"


def endpoint_tokens(endpoint_id: str) -> str:
    """set of an endpoint's credential hashes."""
    return f"{PREFIX}ep:{endpoint_id}:tokens"


def queue(endpoint_id: str) -> str:
    """stream of task ids, consumer group :data:`CONSUMER_GROUP`: one entry per queued or
    leased task; acknowledged and deleted only once the task's result is stored."""
    return f"{PREFIX}ep:{endpoint_id}:q"


def task(task_id: str) -> str:
    """hash: state, owner, endpoint, function, group, payload, resources, options, attempts,
    entry (its queue entry), session (its lease), t_<state> timestamps, result, exc, stdout,
    stderr."""
    return f"{PREFIX}task:{task_id}"


def group(group_id: str) -> str:
    """hash: owner, updated."""
    return f"{PREFIX}tg:{group_id}"


def group_tasks(group_id: str) -> str:
    """list of a task group's task ids, in submission order."""
    return f"{PREFIX}tg:{group_id}:tasks"


def group_results(group_id: str) -> str:
    """stream of finished task ids: the submitter's result stream."""
    return f"{PREFIX}tg:{group_id}:rs"


def group_counts(group_id: str) -> str:
    """hash: state -> how many of the group's tasks are in it."""
    return f"{PREFIX}tg:{group_id}:counts"


def rate(token_hash: str, window: int) -> str:
    """counter of a token's requests in one rate-limit window."""
    return f"{PREFIX}rl:{token_hash}:{window}"


def fanout(job_id: str) -> str:
    """a large batch waiting for the RQ worker to write it."""
    return f"{PREFIX}fanout:{job_id}"


#: Templates for keys a Lua script computes from a record it reads.
TEMPLATES = {
    "queue": queue("{id}"),
    "task": task("{id}"),
    "group_results": group_results("{id}"),
    "group_counts": group_counts("{id}"),
}
