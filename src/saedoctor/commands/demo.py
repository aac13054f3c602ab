"""`saedoctor demo`: the guide's layer sweep on the embedded default (train/demo.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from saedoctor.commands.exit_status import EXIT_INTERRUPTED, handled_errors
from saedoctor.errors import InputError


def register(app: typer.Typer) -> None:
    app.command(name="demo")(demo_command)


def demo_command(
    tokens: Annotated[int, typer.Option(help="training tokens per SAE (one shared stream)")] = (
        300_000
    ),
    eval_tokens: Annotated[int, typer.Option(help="tokens for the diagnosis")] = 40_000,
    layers: Annotated[str | None, typer.Option(
        help="comma-separated blocks (default: 4,10,16,22,28; transcoders 0,1,2,3)")] = None,
    kind: Annotated[str, typer.Option(help="sae | transcoder")] = "sae",
    out: Annotated[Path | None, typer.Option(
        help="output directory (default sae_runs/demo, sae_runs/demo_transcoder)")] = None,
    quiet: Annotated[bool, typer.Option(help="no progress display")] = False,
) -> None:
    """Train SAEs at the guide's layers on the embedded default, diagnose them, compare;
    `--kind transcoder`: skip transcoders at blocks 0-3, and the hand-off to circuit tracing."""
    from saedoctor.train.demo import DEMO_LAYERS, TRANSCODER_LAYERS, run_demo
    from saedoctor.train.trainer import TrainingInterrupted

    with handled_errors():
        if kind not in ("sae", "transcoder"):
            raise InputError(f"--kind {kind!r}: expected sae or transcoder")
        default = TRANSCODER_LAYERS if kind == "transcoder" else DEMO_LAYERS
        layers = layers or ",".join(map(str, default))
        out = out or Path("sae_runs/demo_transcoder" if kind == "transcoder" else "sae_runs/demo")
        try:
            layer_list = [int(x) for x in layers.split(",") if x.strip()]
        except ValueError as e:
            raise InputError(f"--layers {layers!r}: expected comma-separated integers") from e
        try:
            run_demo(layer_list, tokens, eval_tokens, out, quiet, kind=kind)
        except TrainingInterrupted as e:
            typer.echo(f"saedoctor: {e}; run the same `saedoctor demo` again to resume", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None
