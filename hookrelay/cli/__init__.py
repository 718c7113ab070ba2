"""The `relay` command: one click group; its commands live in the modules beside this one.

- running.py: serve, worker, check, send, alert-test
- mappings.py: try, test
- stored.py: events, show, replay, purge, forget (what was stored, and erasing it)

Every RelayError becomes one line on stderr and exit 1; never a traceback for a user error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import sqlalchemy as sa

from hookrelay import __version__
from hookrelay.config import Config, default_config_path, load_config
from hookrelay.errors import InvalidConfig, RelayError
from hookrelay.runtime import storage_problem


class Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except InvalidConfig as exc:  # one line per problem, all of them
            for problem in exc.problems:
                click.echo(f"Error: {problem}", err=True)
            ctx.exit(1)
        except RelayError as exc:
            raise click.ClickException(str(exc)) from None
        except sa.exc.SQLAlchemyError as exc:  # the database went away while a command ran
            raise click.ClickException(f"storage failed: {storage_problem(exc)}") from None


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="config.yaml to use (default: $RELAY_CONFIG or ./config.yaml)",
)


def read_config(path: Path | None) -> Config:
    """The config a command was given with --config, else $RELAY_CONFIG or ./config.yaml."""
    return load_config(path or default_config_path())


@click.group(cls=Group)
@click.version_option(__version__, prog_name="relay")
def main() -> None:
    """hookrelay: Qualifio webhooks in, mapped records out."""


# The commands register themselves on `main` when their modules are imported.
from hookrelay.cli import mappings, running, stored  # noqa: E402

__all__ = ["config_option", "main", "mappings", "read_config", "running", "stored"]
