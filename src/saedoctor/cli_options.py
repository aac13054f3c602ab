"""Command-line options shared by the commands that stream a corpus through a model."""

from __future__ import annotations

from typing import Annotated

import typer

TextField = Annotated[str, typer.Option(help="text column of jsonl/parquet/HF data")]
Tokens = Annotated[int, typer.Option(help="tokens to stream")]
Context = Annotated[int, typer.Option(help="sequence length")]
BatchSize = Annotated[int, typer.Option(help="sequences per batch")]
Device = Annotated[str, typer.Option(help="cpu, cuda, cuda:1, mps")]
ModelDtype = Annotated[str, typer.Option(help="model dtype")]
