"""`saedoctor cache-activations`: its options are `CacheOptions`' fields (saedoctor.options)."""

from __future__ import annotations

import typer

from saedoctor.activations.cache_options import CacheOptions
from saedoctor.commands.exit_status import handled_errors
from saedoctor.commands.params import with_options


def register(app: typer.Typer) -> None:
    app.command(name="cache-activations")(cache_activations_command)


@with_options(CacheOptions)
def cache_activations_command(*, opts: CacheOptions) -> None:
    """Write a model's activations once (safetensors shards + index.json per site), for
    `saedoctor diagnose --activations DIR/<hook_name>` to evaluate SAEs on many times."""
    from saedoctor.activations.cache_write import write_activation_cache

    with handled_errors():
        written = write_activation_cache(opts)
    for hook, directory in written.items():
        typer.echo(f"{hook}: {directory}")
