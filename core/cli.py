"""The ``fedcompute`` command. Parts (service, endpoint) add their commands through the
``fedcompute.cli`` entry-point group, so the core does not import them."""

from __future__ import annotations

import importlib.metadata
import json
import sys

import click

from . import errors, oauth
from .config import delete_credentials, load_credentials, load_saved, save_credentials


class PartsGroup(click.Group):
    """A group whose subcommands also come from installed parts, loaded on first use."""

    def _parts(self) -> dict[str, importlib.metadata.EntryPoint]:
        return {ep.name: ep for ep in importlib.metadata.entry_points(group="fedcompute.cli")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._parts()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is None and name in self._parts():
            try:
                command = self._parts()[name].load()
            except ImportError as exc:
                raise click.ClickException(
                    f"`fedcompute {name}` needs an extra: pip install 'fedcompute[all]' ({exc})"
                ) from exc
        return command


@click.group(cls=PartsGroup)
@click.version_option(package_name="fedcompute")
def main() -> None:
    """fedcompute: federated Function-as-a-Service for science."""


@main.command()
@click.argument("service_url")
@click.option("--token", envvar="FEDCOMPUTE_TOKEN", default=None,
              help="your token (from `fedcompute user create`); asked for if not given")
@click.option("--oidc", is_flag=True,
              help="sign in with the service's identity provider (device authorization flow)")
@click.option("--issuer", default=None, help="with --oidc: which issuer, if it names several")
@click.option("--verify", default=None, help="a CA bundle for a private CA (or 'false')")
def login(service_url: str, token: str | None, oidc: bool, issuer: str | None,
          verify: str | None) -> None:
    """Save the service URL and your token (or OpenID Connect login) for the SDK and the
    endpoint commands."""
    from .client import Client

    service_url = service_url.rstrip("/")
    tls: bool | str = True if verify is None else (
        False if verify.lower() in ("false", "0", "no") else verify)
    if oidc:
        session = _device_login(service_url, issuer, tls)
        with Client(service_url, auth=oauth.RefreshingAuth(session, verify=tls),
                    verify=tls) as client:
            who = client.whoami()
        path = save_credentials(service_url, oauth=session)
        click.echo(f"logged in to {service_url} as {who['name']} through {session.issuer} "
                   f"(saved in {path})")
        return
    if not token:
        token = click.prompt("Token", hide_input=True)
    with Client(service_url, token, verify=tls) as client:
        who = client.whoami()
    path = save_credentials(service_url, token)
    click.echo(f"logged in to {service_url} as {who['name']} (saved in {path})")


def _device_login(service_url: str, issuer: str | None, verify: bool | str) -> oauth.OAuthSession:
    """The device authorization flow against the issuer the service names."""
    import httpx

    try:
        config = httpx.get(f"{service_url}/v1/auth/config", verify=verify, timeout=30,
                           headers={"Accept": "application/json"}).raise_for_status().json()
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot ask {service_url} how to sign in: {exc}") from exc
    issuers = config.get("issuers") or []
    if issuer:
        issuers = [i for i in issuers if i["issuer"].rstrip("/") == issuer.rstrip("/")]
    if not issuers:
        raise click.ClickException(
            f"{service_url} accepts no OpenID Connect issuer" + (f" {issuer!r}" if issuer else "")
            + "; sign in with a token (fedcompute login URL --token ...)")
    if len(issuers) > 1:
        names = ", ".join(i["issuer"] for i in issuers)
        raise click.ClickException(f"{service_url} accepts several issuers: pass --issuer "
                                   f"(one of {names})")
    chosen = issuers[0]
    if not chosen.get("client_id"):
        raise click.ClickException(f"the service names no client id for {chosen['issuer']}")
    try:
        metadata = oauth.discover(chosen["discovery_url"], verify)
        grant = oauth.start_device_flow(metadata, chosen["client_id"], chosen["scopes"], verify)
        where = grant.verification_uri_complete or grant.verification_uri
        click.echo(f"To sign in, open {where}\nand enter the code: {grant.user_code}")
        click.echo("Waiting for you to approve ...", err=True)
        sys.stdout.flush()
        return oauth.finish_device_flow(metadata, chosen["client_id"], grant, verify)
    except errors.ServiceError as exc:
        raise click.ClickException(exc.message) from None


@main.command()
def logout() -> None:
    """Revoke an OpenID Connect login at the identity provider and forget the saved
    credentials."""
    saved = load_saved()
    if isinstance(saved.get("oauth"), dict):
        session = oauth.OAuthSession.from_dict(saved["oauth"])
        try:
            revoked = oauth.revoke(session)
        except errors.ServiceError as exc:
            click.echo(f"could not revoke the tokens at {session.issuer}: {exc.message}",
                       err=True)
        else:
            click.echo(f"revoked the tokens at {session.issuer}" if revoked else
                       f"{session.issuer} offers no revocation; the tokens expire by "
                       "themselves", err=True)
    path = delete_credentials()
    click.echo(f"removed {path}")


@main.command()
def whoami() -> None:
    """Show who the saved credentials belong to, what they may do and how they sign in."""
    from .client import Client

    creds = load_credentials()
    with Client(creds.service_url, creds.token) as client:
        who = client.whoami()
        if isinstance(client.auth, oauth.RefreshingAuth):
            who["login"] = oauth.describe(client.auth.session)
    click.echo(json.dumps(who, indent=2))


if __name__ == "__main__":
    sys.exit(main())
