"""``FederatedComputeHook``: an Airflow connection (type ``fedcompute``) to a fedcompute service."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException
from fedcompute import Client, errors, serialize
from fedcompute.oauth import RefreshingAuth
from fedcompute.output import OutputLines

#: States after which a task never changes again.
FINAL_STATES = frozenset({"success", "failed", "cancelled"})


@dataclass(frozen=True)
class ServiceSettings:
    """What a ``fedcompute`` connection resolves to."""

    service_url: str | None
    token: str | None
    endpoint_id: str | None = None
    verify: bool | str = True
    #: OpenID Connect: a refresh token and where to use it (the access token is refreshed).
    refresh_token: str | None = None
    token_endpoint: str | None = None
    client_id: str | None = None
    client_secret: str | None = None

    def client(self) -> Client:
        """A :class:`fedcompute.Client` for these settings; with a refresh token, it refreshes
        its access token by itself for as long as the task runs."""
        if self.refresh_token:
            if not (self.token_endpoint and self.client_id):
                raise ValueError("a fedcompute connection with a refresh_token needs "
                                 "token_endpoint and client_id in its extra")
            auth = RefreshingAuth.from_refresh_token(
                self.refresh_token, self.token_endpoint, self.client_id,
                client_secret=self.client_secret, verify=self.verify)
            return Client(self.service_url, auth=auth, verify=self.verify)
        return Client(self.service_url, self.token, verify=self.verify)


def settings_from_connection(conn: Any) -> ServiceSettings:
    """Read a ``fedcompute`` connection: host (+ port, schema) = URL, password = token.

    ``host`` may be a full URL (``https://compute.example.org``); otherwise the scheme is the
    connection's ``schema`` field when it is ``http``/``https``, or ``extra["scheme"]``, else
    ``https``. ``extra`` may hold ``endpoint_id`` (the default endpoint) and ``verify`` (false or
    a CA bundle path). Keys written by the UI form (``extra__fedcompute__endpoint_id``) work too.

    For an OpenID Connect identity, ``extra`` holds ``refresh_token``, ``token_endpoint`` and
    ``client_id`` (and ``client_secret`` for a confidential client) instead of a password.
    With neither, the SDK's own login is used (``fedcompute login --oidc`` refreshes too).
    """
    extra = dict(conn.extra_dejson or {})
    for key in list(extra):  # the connection form prefixes custom fields
        if key.startswith("extra__fedcompute__"):
            extra.setdefault(key.removeprefix("extra__fedcompute__"), extra[key])
    host = (conn.host or "").strip().rstrip("/")
    url: str | None = None
    if host:
        if "://" in host:
            url = host
            if conn.port and ":" not in host.split("://", 1)[1].split("/", 1)[0]:
                scheme, rest = host.split("://", 1)
                name, slash, path = rest.partition("/")
                url = f"{scheme}://{name}:{conn.port}{slash}{path}"
        else:
            scheme = conn.schema if conn.schema in ("http", "https") else extra.get("scheme",
                                                                                  "https")
            url = f"{scheme}://{host}" + (f":{conn.port}" if conn.port else "")
    verify = extra.get("verify", True)
    if isinstance(verify, str) and verify.lower() in ("false", "0", "no"):
        verify = False
    return ServiceSettings(url, conn.password or None, extra.get("endpoint_id") or None, verify,
                           extra.get("refresh_token") or None,
                           extra.get("token_endpoint") or None, extra.get("client_id") or None,
                           extra.get("client_secret") or None)


class FederatedComputeHook(BaseHook):
    """Submit to, wait for and cancel tasks on a fedcompute service.

    The connection (type ``fedcompute``) holds the service URL (host), the token (password) and
    optionally a default ``endpoint_id`` (extra). If the connection does not exist, the SDK's own
    configuration is used (``FEDCOMPUTE_SERVICE_URL``/``FEDCOMPUTE_TOKEN`` or ``fedcompute login``).
    """

    conn_name_attr = "fedcompute_conn_id"
    default_conn_name = "fedcompute_default"
    conn_type = "fedcompute"
    hook_name = "fedcompute"

    def __init__(self, fedcompute_conn_id: str = default_conn_name, *,
                 settings: ServiceSettings | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fedcompute_conn_id = fedcompute_conn_id
        self._settings = settings
        self._client: Client | None = None

    # --- connection --------------------------------------------------------------------

    @property
    def settings(self) -> ServiceSettings:
        """The connection's settings (looked up once)."""
        if self._settings is None:
            try:
                conn = self.get_connection(self.fedcompute_conn_id)
            except AirflowNotFoundException:
                self.log.info("no Airflow connection %r; using the fedcompute SDK's configuration",
                              self.fedcompute_conn_id)
                self._settings = ServiceSettings(None, None)
            else:
                self._settings = settings_from_connection(conn)
        return self._settings

    def get_conn(self) -> Client:
        """A :class:`fedcompute.Client` for the connection (one per hook)."""
        if self._client is None:
            self._client = self.settings.client()
        return self._client

    @property
    def endpoint_id(self) -> str | None:
        """The connection's default endpoint."""
        return self.settings.endpoint_id

    def test_connection(self) -> tuple[bool, str]:
        """Used by the UI's *Test* button: authenticate against the service."""
        try:
            who = self.get_conn().whoami()
        except Exception as exc:  # noqa: BLE001 - report any failure to the UI
            return False, str(exc)
        return True, f"connected to {self.get_conn().service_url} as {who.get('name', who)}"

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # --- tasks -------------------------------------------------------------------------

    def submit(self, fn: Callable, args: Iterable = (), kwargs: dict | None = None, *,
               endpoint_id: str | None = None, capture_output: bool = True,
               stream_output: bool = False, resource_specification: dict | None = None,
               task_group_id: str | None = None) -> tuple[str, str]:
        """Run ``fn(*args, **kwargs)`` on an endpoint; returns ``(task_id, task_group_id)``.

        Each call gets its own task group unless one is given, so that :meth:`wait` can
        long-poll that group's result stream and wake up the moment the task finishes.
        """
        endpoint = endpoint_id or self.endpoint_id
        if not endpoint:
            raise ValueError(
                "no endpoint: pass endpoint_id= or set extra.endpoint_id on connection "
                f"{self.fedcompute_conn_id!r}")
        client = self.get_conn()
        task: dict[str, Any] = {
            "task_id": str(uuid.uuid4()),
            "function_id": client.register_function(fn),
            "payload": serialize.serialize_args(tuple(args), dict(kwargs or {})),
        }
        if resource_specification:
            task["resource_specification"] = dict(resource_specification)
        options = {name: True for name, on in (("capture_output", capture_output),
                                               ("stream_output", stream_output)) if on}
        if options:
            task["options"] = options
        group = task_group_id or str(uuid.uuid4())
        # Task ids are ours, so a retried request cannot run the task twice.
        client.submit_tasks(endpoint, [task], group)
        return task["task_id"], group

    def poll(self, task_id: str, task_group_id: str, cursor: str = "0",
             wait: float = 5.0, on_output: Callable[[dict], Any] | None = None
             ) -> tuple[bool, str]:
        """One long-poll of the task's group: ``(finished, next_cursor)``; ``on_output`` gets
        the task's live output events (``stream_output``: ``{"stream", "text", "at"}``).

        Returns as soon as the task finishes, or after ``wait`` seconds. Transient service
        errors count as "not finished yet" so that a restarting service does not fail the task.
        """
        try:
            page = self.get_conn().results_page(task_group_id, cursor, wait=max(wait, 0.0),
                                                events=on_output is not None)
        except errors.ServiceError as exc:
            if exc.status in (401, 403, 404):
                raise
            self.log.warning("waiting for task %s: %s (will retry)", task_id, exc)
            time.sleep(min(wait, 2.0))
            return False, cursor
        if on_output is not None:
            for event in page.get("output") or ():
                if event.get("task_id") == task_id:
                    on_output(event)
        done = any(r.get("task_id") == task_id for r in page["results"])
        return done, page["cursor"]

    def wait(self, task_id: str, task_group_id: str, timeout: float | None,
             poll_interval: float = 5.0, should_stop: Callable[[], bool] | None = None,
             on_output: Callable[[dict], Any] | None = None) -> bool:
        """Block until the task finishes (True) or ``timeout`` seconds pass (False);
        ``on_output`` as in :meth:`poll`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        cursor = "0"
        while True:
            if should_stop is not None and should_stop():
                return False
            remaining = poll_interval if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                return False
            done, cursor = self.poll(task_id, task_group_id, cursor,
                                     wait=min(poll_interval, remaining), on_output=on_output)
            if done:
                return True

    def get_task(self, task_id: str) -> dict:
        """Status, timestamps, result or exception, and captured output of a task."""
        return self.get_conn().get_task(task_id)

    def cancel(self, task_id: str) -> str:
        """Cancel a task (a running one is stopped at its endpoint); returns its status
        afterwards: ``cancelled``, ``cancelling`` (running: being stopped), or the state it had
        ended in."""
        return self.get_conn().cancel_task(task_id)


class RemoteOutputLog:
    """Writes a remote task's live output events (``stream_output``) to ``log`` as lines,
    ``[remote stdout] ...``; call it with each event, then :meth:`end` when the task ends."""

    def __init__(self, log: Any):
        self.log = log
        self._lines = OutputLines()

    def __call__(self, event: dict) -> None:
        for line in self._lines.feed(event["stream"], event["text"], event["at"]):
            self.log.info("[remote %s] %s", line.stream, line.text)

    def end(self) -> None:
        for line in self._lines.end():
            self.log.info("[remote %s] %s", line.stream, line.text)
