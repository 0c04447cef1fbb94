"""``fedcompute service ...`` and ``fedcompute user ...``."""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import click
from fedcompute.process import AlreadyRunning, PidLock

from .auth import hash_token, issue_user_token
from .embedded import EmbeddedRedis, redis_password_file
from .scopes import SCOPES
from .server import Service, default_data_dir, running_service
from .settings import Settings
from .store import Store

_data_dir = click.option("--data-dir", type=click.Path(path_type=Path), default=None,
                         help="service state folder (default: $FEDCOMPUTE_HOME/service)")
_redis_url = click.option("--redis-url", envvar="FEDCOMPUTE_REDIS_URL", default=None,
                          help="an external Redis; default: the embedded one")


@click.group()
def service() -> None:
    """Run the fedcompute cloud service."""


@service.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int, help="0 picks a free port")
@_redis_url
@_data_dir
@click.option("--workers", default=1, show_default=True,
              help="API worker processes (gevent: each holds thousands of connections)")
@click.option("--certfile", default=None, help="TLS certificate (PEM) for HTTPS")
@click.option("--keyfile", default=None, help="TLS private key (PEM)")
def start(host: str, port: int, redis_url: str | None, data_dir: Path | None, workers: int,
          certfile: str | None, keyfile: str | None) -> None:
    """Start the API (gunicorn), the RQ worker and, with no --redis-url, an embedded Redis."""
    try:
        svc = Service(host, port, redis_url, data_dir, workers, certfile, keyfile).start()
    except AlreadyRunning as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"fedcompute service at {svc.url} (data in {svc.data_dir})", err=True)
    click.echo(json.dumps({"url": svc.url, "pid": __import__("os").getpid()}), err=False)
    svc.serve_forever()


@contextlib.contextmanager
def open_store(redis_url: str | None, data_dir: Path | None) -> Iterator[Store]:
    """The service's store: its external Redis, its running embedded one, or the embedded one
    started just for this command (on the same data folder, so nothing diverges)."""
    data_dir = Path(data_dir or default_data_dir())
    state = running_service(data_dir)
    url = redis_url or (state or {}).get("redis_url")
    if url:
        yield Store(url, Settings.from_env(redis_url=url))
        return
    # No service runs here: start its Valkey for this command, holding the service's lock so
    # that no service starts a second one on the same files meanwhile.
    try:
        lock = PidLock(data_dir / "service.lock", f"a fedcompute service on {data_dir}").acquire()
    except AlreadyRunning as exc:
        raise click.ClickException(f"{exc}; it has not written its state yet, try again") \
            from None
    embedded = EmbeddedRedis(data_dir / "redis", password=redis_password_file(data_dir))
    try:
        url = embedded.start().url
        yield Store(url, Settings.from_env(redis_url=url))
    finally:
        embedded.stop()
        lock.release()


@click.group()
def user() -> None:
    """Manage users and their tokens (run where the service runs)."""


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+)([smhdw])")


def parse_duration(text: str) -> int:
    """Seconds in ``90s``, ``15m``, ``12h``, ``30d``, ``2w`` or sums like ``1d12h``."""
    value = text.strip().lower()
    parts = _DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ValueError(f"invalid duration {text!r}: use e.g. 90s, 15m, 12h, 30d, 2w")
    seconds = sum(int(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"invalid duration {text!r}: must be more than 0 s")
    return seconds


class Duration(click.ParamType):
    name = "duration"

    def convert(self, value: object, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@user.command("create")
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, type=click.Choice(SCOPES),
              help="what the token may do (repeatable; default: all but admin)")
@click.option("--expires", type=Duration(), default=None,
              help="lifetime, e.g. 90s, 12h, 30d (default: never)")
@click.option("--label", default="", help="a note kept with the token")
@_redis_url
@_data_dir
def create_user(name: str, scopes: tuple[str, ...], expires: int | None, label: str,
                redis_url: str | None, data_dir: Path | None) -> None:
    """Create a user (if new) and print a new token for it."""
    from fedcompute.protocol import Name
    from pydantic import TypeAdapter, ValidationError

    try:
        TypeAdapter(Name).validate_python(name)
    except ValidationError as exc:
        raise click.BadParameter("use letters, digits and _.@- (at most 64)") from exc
    until = time.time() + expires if expires else None
    with open_store(redis_url, data_dir) as store:
        store.create_user(name)
        click.echo(issue_user_token(store, name, label, list(scopes) or None, until))
    what = ", ".join(s for s in SCOPES if s in scopes) if scopes else "all user scopes"
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(until)) if until else "never"
    click.echo(f"token for {name}: scopes {what}; expires {when}", err=True)


@user.command("revoke")
@click.argument("name")
@click.option("--token", default=None, help="revoke only this token (default: all of them)")
@_redis_url
@_data_dir
def revoke(name: str, token: str | None, redis_url: str | None, data_dir: Path | None) -> None:
    """Revoke a user's tokens; they are refused at once."""
    with open_store(redis_url, data_dir) as store:
        if token:
            ok = store.revoke_token(hash_token(token))
            click.echo("revoked 1 token" if ok else "no such token")
        else:
            click.echo(f"revoked {store.revoke_tokens('user', name)} token(s) of {name}")


@user.command("list")
@click.option("--tokens", is_flag=True, help="also each user's tokens: label, scopes, expiry")
@_redis_url
@_data_dir
def list_users(tokens: bool, redis_url: str | None, data_dir: Path | None) -> None:
    """List users (OpenID Connect users appear after their first request)."""
    with open_store(redis_url, data_dir) as store:
        for name in store.list_users():
            click.echo(name)
            for record in store.tokens.tokens_of("user", name) if tokens else ():
                scopes = ",".join(record["scopes"]) if record["scopes"] is not None else "all"
                expires = record["expires"]
                state = "never expires" if expires is None else (
                    ("expired " if expires <= time.time() else "expires ")
                    + time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(expires)))
                click.echo(f"  {record['hash'][:12]}  scopes={scopes}  {state}  "
                           f"{record['label']}")
