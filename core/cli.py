"""The ``fedcompute`` command. Parts (service, endpoint) add their commands through the
``fedcompute.cli`` entry-point group, so the core does not import them."""

from __future__ import annotations

import importlib.metadata
import json
import sys

import click

from .config import credentials_path, load_credentials, save_credentials


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
@click.option("--token", envvar="FEDCOMPUTE_TOKEN", prompt=True, hide_input=True,
              help="your token (from `fedcompute user create`)")
def login(service_url: str, token: str) -> None:
    """Save the service URL and your token for the SDK and the endpoint commands."""
    from .client import Client

    with Client(service_url, token) as client:
        who = client.whoami()
    path = save_credentials(service_url, token)
    click.echo(f"logged in to {service_url} as {who['name']} (saved in {path})")


@main.command()
def logout() -> None:
    """Forget the saved token."""
    path = credentials_path()
    path.unlink(missing_ok=True)
    click.echo(f"removed {path}")


@main.command()
def whoami() -> None:
    """Show who the saved credentials belong to."""
    from .client import Client

    creds = load_credentials()
    with Client(creds.service_url, creds.token) as client:
        click.echo(json.dumps(client.whoami(), indent=2))


if __name__ == "__main__":
    sys.exit(main())
