"""``fedcompute service ...`` and ``fedcompute user ...``."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import click
from fedcompute.process import AlreadyRunning, PidLock

from .auth import hash_token, issue_user_token
from .embedded import EmbeddedRedis, redis_password_file
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
@click.option("--workers", default=1, show_default=True, help="gunicorn worker processes")
@click.option("--threads", default=128, show_default=True, help="threads per worker")
@click.option("--certfile", default=None, help="TLS certificate (PEM) for HTTPS")
@click.option("--keyfile", default=None, help="TLS private key (PEM)")
def start(host: str, port: int, redis_url: str | None, data_dir: Path | None, workers: int,
          threads: int, certfile: str | None, keyfile: str | None) -> None:
    """Start the API (gunicorn), the RQ worker and, with no --redis-url, an embedded Redis."""
    try:
        svc = Service(host, port, redis_url, data_dir, workers, threads, certfile,
                      keyfile).start()
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


@user.command("create")
@click.argument("name")
@_redis_url
@_data_dir
def create_user(name: str, redis_url: str | None, data_dir: Path | None) -> None:
    """Create a user (if new) and print a new token for it."""
    from fedcompute.protocol import Name
    from pydantic import TypeAdapter, ValidationError

    try:
        TypeAdapter(Name).validate_python(name)
    except ValidationError as exc:
        raise click.BadParameter("use letters, digits and _.@- (at most 64)") from exc
    with open_store(redis_url, data_dir) as store:
        store.create_user(name)
        click.echo(issue_user_token(store, name))


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
@_redis_url
@_data_dir
def list_users(redis_url: str | None, data_dir: Path | None) -> None:
    """List users."""
    with open_store(redis_url, data_dir) as store:
        for name in store.list_users():
            click.echo(name)
