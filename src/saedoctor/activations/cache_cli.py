"""`saedoctor cache-activations` (typer; `register(app)` adds it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from saedoctor import cli_options as opt
from saedoctor import defaults


def register(app: typer.Typer) -> None:
    app.command(name="cache-activations")(cache_activations_command)


def cache_activations_command(
    out: Annotated[Path, typer.Option(help="cache directory (one subdirectory per site)")],
    layer: Annotated[
        list[int], typer.Option("--layer", help="block index (repeatable: several sites)")
    ],
    site: Annotated[str, typer.Option(help="resid_post | resid_pre | mlp_out | attn_out")] = (
        "resid_post"
    ),
    model: Annotated[
        str | None, typer.Option(help="HF model id or local dir; default: SmolLM2-135M-Instruct")
    ] = None,
    corpus: Annotated[
        str, typer.Option(help="as for diagnose: builtin, file, directory or HF dataset id")
    ] = defaults.DEFAULT_EVAL_CORPUS,
    text_field: opt.TextField = "text",
    tokens: opt.Tokens = defaults.DEFAULT_EVAL_TOKENS,
    context: opt.Context = defaults.DEFAULT_CONTEXT,
    batch_size: opt.BatchSize = defaults.DEFAULT_BATCH_SIZE,
    device: opt.Device = "cpu",
    dtype: opt.ModelDtype = "float32",
    store_dtype: Annotated[
        str, typer.Option(help="float32 | float16 | bfloat16 on disk (read back as float32)")
    ] = "float32",
    shard_tokens: Annotated[int, typer.Option(help="tokens per shard file")] = 262_144,
    include_special: Annotated[bool, typer.Option(help="store BOS/EOS/pad positions too")] = False,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
) -> None:
    """Write a model's activations once (safetensors shards + index.json per site), for
    `saedoctor diagnose --activations DIR/<hook_name>` to evaluate SAEs on many times."""
    from saedoctor.activations.cache_write import CacheOptions, write_activation_cache
    from saedoctor.cli import handled_errors
    from saedoctor.errors import InputError
    from saedoctor.sae.site import SITE_KINDS, Site

    with handled_errors():
        if site not in SITE_KINDS:
            raise InputError(f"--site {site!r}: expected one of {', '.join(SITE_KINDS)}")
        if any(n < 0 for n in layer):
            raise InputError("--layer: expected block indices >= 0")
        opts = CacheOptions(
            model=model, sites=sorted({Site(n, site) for n in layer}), corpus=corpus,
            out=str(out), tokens=tokens, context=context, batch_size=batch_size,
            device=device, dtype=dtype, store_dtype=store_dtype, shard_tokens=shard_tokens,
            text_field=text_field, include_special=include_special, quiet=quiet,
        )  # fmt: skip
        written = write_activation_cache(opts)
    for hook, directory in written.items():
        typer.echo(f"{hook}: {directory}")
