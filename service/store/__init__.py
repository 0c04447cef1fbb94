"""The service's Redis: one part per concept behind the :class:`Store` facade.

============== =====================================================================
``keys``        every key, in one place
``scripts``     the Lua scripts (``lua/*.lua``; each header documents KEYS and ARGV)
``tokens``      users and token hashes
``functions``   registered functions
``endpoints``   endpoint records, queue counts
``tasks``       submission, task records, cancellation, result streams
``leases``      agent sessions and the lease protocol
``maintenance`` reclaiming the leases of silent endpoints
``wakeups``     long-polls woken through pub/sub
``cache``       per-process caches of hot records, invalidated through pub/sub
``console``     the web console's sessions and light, bounded reads
============== =====================================================================

Callers use ``Store``; each of its methods is the same-named method of one part.
"""

from __future__ import annotations

import threading
from typing import Any

from .cache import Cache, RateCounter
from .connection import connect
from .console import Console
from .endpoints import Endpoints
from .functions import Functions
from .leases import Leases, StaleSession
from .maintenance import Maintenance
from .records import sharing_allows
from .scripts import Scripts
from .tasks import Tasks
from .tokens import Tokens
from .wakeups import Wakeups

__all__ = ["StaleSession", "Store", "sharing_allows"]


class _Part:
    """A :class:`Store` method that is the same-named method of one of its parts."""

    def __init__(self, part: str):
        self.part = part

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, store: Store | None, owner: type) -> Any:
        if store is None:
            return self
        return getattr(getattr(store, self.part), self.name)


class Store:
    """All reads and writes of the service's Redis."""

    def __init__(self, url: str, settings: Any, stopping: threading.Event | None = None):
        self.url = url
        self.settings = settings
        #: Set when this process stops: long-polls then end within one slice.
        self.stopping = stopping or threading.Event()
        # Long-polls hold no connection (see wakeups.py): requests borrow one for a moment.
        self.redis = connect(url, socket_timeout=30, socket_connect_timeout=5,
                             health_check_interval=30, max_connections=512)
        self.wakeups = Wakeups(self.redis, self.stopping)
        scripts = Scripts(self.redis, settings.redis_min_replicas, settings.redis_wait_timeout)
        self.cache = Cache(self.redis, self.wakeups)
        self.tokens = Tokens(self.redis, self.cache, RateCounter(self.redis))
        self.functions = Functions(self.redis, self.cache)
        self.endpoints = Endpoints(self.redis, self.tokens, settings.heartbeat_timeout,
                                   self.cache)
        self.tasks = Tasks(self.redis, self.wakeups, scripts, settings.task_ttl,
                           settings.result_ttl, settings.maintenance_interval,
                           cache=self.cache)
        self.leases = Leases(self.redis, self.wakeups, scripts, settings)
        self.upkeep = Maintenance(self.endpoints, self.leases, self.tasks,
                                  settings.heartbeat_timeout)
        self.console = Console(self.redis)

    def ping(self) -> bool:
        return bool(self.redis.ping())

    def stop(self) -> None:
        """This process stops: long-polls return at once."""
        self.stopping.set()
        self.wakeups.wake_all()

    create_user = _Part("tokens")
    list_users = _Part("tokens")
    add_token = _Part("tokens")
    lookup_token = _Part("tokens")
    revoke_tokens = _Part("tokens")
    revoke_token = _Part("tokens")
    count_request = _Part("tokens")
    tokens_of = _Part("tokens")

    put_function = _Part("functions")
    get_function = _Part("functions")
    functions_usable = _Part("functions")
    function_bodies = _Part("functions")
    share_function = _Part("functions")
    delete_function = _Part("functions")

    put_endpoint = _Part("endpoints")
    get_endpoint = _Part("endpoints")
    endpoint_access = _Part("endpoints")
    endpoints_of = _Part("endpoints")
    endpoint_counts = _Part("endpoints")
    share_endpoint = _Part("endpoints")

    def delete_endpoint(self, endpoint_id: str, owner: str) -> int:
        """Delete an endpoint; its tasks not ended (queued or held by its agent) fail with
        ``EndpointDeleted``. Returns how many did."""
        failed = self.tasks.fail_endpoint_tasks(endpoint_id, "EndpointDeleted",
                                                f"endpoint {endpoint_id} was deleted")
        self.endpoints.delete_endpoint(endpoint_id, owner)
        return failed

    submit = _Part("tasks")
    get_tasks = _Part("tasks")
    task_owner = _Part("tasks")
    cancel = _Part("tasks")
    task_owners = _Part("tasks")
    cancel_many = _Part("tasks")
    store_results = _Part("tasks")
    mark = _Part("tasks")
    claim_group = _Part("tasks")
    group_owner = _Part("tasks")
    group_counts = _Part("tasks")
    groups_of = _Part("tasks")
    group_page = _Part("tasks")
    group_size = _Part("tasks")
    group_task_ids = _Part("tasks")
    group_task_ids_page = _Part("tasks")
    read_results = _Part("tasks")
    add_output = _Part("tasks")

    connect_agent = _Part("leases")
    heartbeat = _Part("leases")
    touch = _Part("leases")
    lease = _Part("leases")
    release = _Part("leases")
    reclaim = _Part("leases")

    maintenance = _Part("upkeep")

    # the web console (service/console)
    create_session = _Part("console")
    get_session = _Part("console")
    delete_session = _Part("console")
    set_flash = _Part("console")
    clear_flash = _Part("console")
    open_stream = _Part("console")
    close_stream = _Part("console")
    functions_of = _Part("console")
    function_names = _Part("console")
    group_summaries = _Part("console")
    light_tasks = _Part("console")
    group_light_page = _Part("console")
    group_sample = _Part("console")
    results_cursor = _Part("console")
    finished_since = _Part("console")
    cancellable_in = _Part("console")

