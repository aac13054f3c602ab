"""Command line: `saedoctor diagnose` and friends (typer)."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from saedoctor import defaults
from saedoctor.errors import InputError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=False,
    help="Is this sparse autoencoder healthy, why not, and how to train a better one.",
)

EXIT_BAD_INPUT = 2


@contextlib.contextmanager
def handled_errors() -> Iterator[None]:
    """Bad input → one line on stderr and exit code 2; Ctrl-C → exit 130 without a traceback."""
    try:
        yield
    except InputError as err:
        typer.echo(f"saedoctor: error: {err}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except KeyboardInterrupt:
        typer.echo("saedoctor: interrupted", err=True)
        raise typer.Exit(130) from None


@app.command()
def diagnose(
    sae: Annotated[
        list[str] | None,
        typer.Option(
            "--sae",
            help="SAE path (repeatable: several layers at once). "
            "Default: the embedded default SAE, trained and cached on first use.",
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="HF model id or local dir; default: SmolLM2-135M-Instruct")
    ] = None,
    layer: Annotated[
        int | None, typer.Option(help="block index, when the SAE config has none")
    ] = None,
    site: Annotated[
        str | None, typer.Option(help="resid_post | resid_pre | mlp_out | attn_out")
    ] = None,
    corpus: Annotated[
        str,
        typer.Option(
            help="python-docs[@train|@test], python-code[...], a .txt/.jsonl/"
            ".parquet file or dir, or an HF dataset id"
        ),
    ] = defaults.DEFAULT_EVAL_CORPUS,
    text_field: Annotated[str, typer.Option(help="text column of jsonl/parquet/HF data")] = "text",
    tokens: Annotated[int, typer.Option(help="tokens to stream")] = defaults.DEFAULT_EVAL_TOKENS,
    context: Annotated[int, typer.Option(help="sequence length")] = defaults.DEFAULT_CONTEXT,
    batch_size: Annotated[
        int, typer.Option(help="sequences per batch")
    ] = defaults.DEFAULT_BATCH_SIZE,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1, mps")] = "cpu",
    dtype: Annotated[str, typer.Option(help="model dtype")] = "float32",
    activations: Annotated[
        str | None,
        typer.Option(help="cached activations (.safetensors or .npy) instead of a model"),
    ] = None,
    include_special: Annotated[bool, typer.Option(help="count BOS/EOS/pad positions too")] = False,
    always_on_threshold: Annotated[
        float, typer.Option(help="density above which a feature is always-on")
    ] = 0.80,
    seed: Annotated[int, typer.Option()] = 0,
    out: Annotated[Path, typer.Option(help="report JSON path")] = Path("run.json"),
    as_json: Annotated[
        bool, typer.Option("--json", help="print the report JSON to stdout")
    ] = False,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
) -> None:
    """Measure every health metric of one or more SAEs in one streaming pass."""
    from saedoctor.diagnose import DiagnoseOptions
    from saedoctor.diagnose import diagnose as run_diagnose
    from saedoctor.report.document import write_report
    from saedoctor.report.terminal import print_report

    with handled_errors():
        opts = DiagnoseOptions(
            model=model,
            saes=list(sae or []),
            layer=layer,
            site=site,
            corpus=corpus,
            text_field=text_field,
            tokens=tokens,
            context=context,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            activations=activations,
            include_special=include_special,
            always_on_threshold=always_on_threshold,
            seed=seed,
            quiet=quiet,
        )
        document = run_diagnose(opts)
        write_report(document, out)
        if as_json:
            typer.echo(json.dumps(document, indent=1))
        else:
            print_report(document)
            typer.echo(f"report: {out}")


@app.command()
def version() -> None:
    """Print the saedoctor version."""
    from saedoctor import __version__

    typer.echo(__version__)


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
