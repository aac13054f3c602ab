"""Command line: the `saedoctor` typer app, built from the command modules (saedoctor.commands).

Each command's options are declared once, as fields of its options dataclass
(`DiagnoseOptions`, `TrainConfig`, `CacheOptions`; see saedoctor.options); this module only
puts the commands together. Nothing imports it but the entry points.
"""

from __future__ import annotations

import sys

import typer

from saedoctor.commands import cache, demo, diagnose, reports, train

app = typer.Typer(
    add_completion=False,
    no_args_is_help=False,
    help="Is this sparse autoencoder healthy, why not, and how to train a better one.",
)

for command_module in (diagnose, reports, train, demo, cache):
    command_module.register(app)


@app.command()
def version() -> None:
    """Print the saedoctor version."""
    from saedoctor.version import __version__

    typer.echo(__version__)


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
