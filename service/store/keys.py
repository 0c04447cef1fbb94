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


def endings() -> str:
    """sorted set: task id -> when it must have ended (its record's expiry less a margin) or
    started (its ``deadline``), for tasks not ended; maintenance fails the overdue ones."""
    return f"{PREFIX}tasks:endings"


def endpoint_beats() -> str:
    """sorted set: endpoint id -> its agent's last sign of life, for endpoints with a session;
    maintenance reads only the silent end of it."""
    return f"{PREFIX}endpoints:beats"


def endpoint_tokens(endpoint_id: str) -> str:
    """set of an endpoint's credential hashes."""
    return f"{PREFIX}ep:{endpoint_id}:tokens"


def queue(endpoint_id: str) -> str:
    """stream of task ids, consumer group :data:`CONSUMER_GROUP`: one entry per queued or
    leased task; acknowledged and deleted only once the task's result is stored."""
    return f"{PREFIX}ep:{endpoint_id}:q"


def cancels(endpoint_id: str) -> str:
    """set of task ids the endpoint's agent holds and must stop (cancelled while leased)."""
    return f"{PREFIX}ep:{endpoint_id}:cancels"


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


def wake(what: str) -> str:
    """pub/sub channel: something a long-poll waits for happened (see ``wakeups.py``)."""
    return f"{PREFIX}wake:{what}"


def wake_queue(endpoint_id: str) -> str:
    """published when tasks are queued for the endpoint."""
    return wake(f"q:{endpoint_id}")


def wake_results(group_id: str) -> str:
    """published when results of the task group are stored."""
    return wake(f"rs:{group_id}")


def relay_control(endpoint_id: str) -> str:
    """hash: instance, session, versions, since: the endpoint's Dask bridge is connected to
    that service instance (expires unless refreshed)."""
    return f"{PREFIX}relay:control:{endpoint_id}"


def relay_comm(comm_id: str) -> str:
    """hash: instance, endpoint, user: a user's Dask comm waiting for the endpoint's dial-back
    on that instance."""
    return f"{PREFIX}relay:comm:{comm_id}"


def relay_instance(instance_id: str) -> str:
    """string host:port: where an API process takes relay hops from other instances."""
    return f"{PREFIX}relay:instance:{instance_id}"


def relay_open(user: str | None = None) -> str:
    """sorted set of open relayed comms (all, or one user's), scored by when they expire."""
    return f"{PREFIX}relay:open" + (f":{user}" if user else "")


def relay_hops() -> str:
    """counter of dial-backs forwarded between instances (for operators and tests)."""
    return f"{PREFIX}relay:hops"


def relay_secret() -> str:
    """string: what a relay hop between instances shows to be one (made by the first one)."""
    return f"{PREFIX}relay:secret"


def wake_dial(endpoint_id: str) -> str:
    """published (comm id) when a user's Dask comm asks the endpoint to dial back."""
    return wake(f"dial:{endpoint_id}")


def wake_control(endpoint_id: str) -> str:
    """published (session instance) when the endpoint's Dask bridge (re)connects."""
    return wake(f"ctl:{endpoint_id}")


#: Templates for keys a Lua script computes from a record it reads.
TEMPLATES = {
    "queue": queue("{id}"),
    "task": task("{id}"),
    "group_results": group_results("{id}"),
    "group_counts": group_counts("{id}"),
    "wake_queue": wake_queue("{id}"),
    "cancels": cancels("{id}"),
    "wake_results": wake_results("{id}"),
    "endings": endings(),
}


# --- web console (service/console) -------------------------------------------------------

def console_session(session_hash: str) -> str:
    """hash: the principal signed in (user, scopes, groups, via, issuer, expires), csrf (the
    session's form secret), token (hash of the static token signed in with, or ""), created,
    flash; keyed by the SHA-256 of the session cookie; expires when idle."""
    return f"{PREFIX}console:session:{session_hash}"


def console_streams(user: str) -> str:
    """counter of a user's open live streams (server-sent events) on the console."""
    return f"{PREFIX}console:streams:{user}"
