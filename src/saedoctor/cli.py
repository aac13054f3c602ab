"""Command line: `saedoctor diagnose` and friends (typer)."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from saedoctor import cli_options as opt
from saedoctor import defaults
from saedoctor.errors import InputError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=False,
    help="Is this sparse autoencoder healthy, why not, and how to train a better one.",
)

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


@contextlib.contextmanager
def handled_errors() -> Iterator[None]:
    """Bad input, or a file that cannot be written (full disk: the previous file is left as it
    was) → one line on stderr and exit code 2; Ctrl-C → exit 130 without a traceback, saying
    where the state was saved when the command saves one."""
    from saedoctor.atomic import WriteFailed

    try:
        yield
    except InputError as err:
        typer.echo(f"saedoctor: error: {err}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except WriteFailed as err:
        typer.echo(f"saedoctor: {err}", err=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except KeyboardInterrupt as err:  # a subclass (diagnose's) carries a message
        typer.echo(f"saedoctor: {str(err) or 'interrupted'}", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None


FAIL_LEVELS = ("poor", "warning")


def should_fail(document: dict, level: str | None) -> bool:
    """`poor`: any SAE graded poor. `warning`: also any warning/critical metric or diagnosis."""
    if level is None:
        return False
    for entry in document["saes"]:
        grading = entry.get("grading") or {}
        if grading.get("grade") == "poor":
            return True
        if level == "warning" and any(
            d.get("severity") in ("warning", "critical") for d in entry.get("diagnoses", [])
        ):
            return True
    return False


def _check_choice(flag: str, value: str | None, choices: tuple[str, ...]) -> None:
    if value is not None and value not in choices:
        raise InputError(f"{flag} {value!r}: expected one of {', '.join(choices)}")


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
    compare_corpus: Annotated[
        str | None,
        typer.Option(help="evaluate the same SAEs on a second corpus: training-data mismatch"),
    ] = None,
    text_field: opt.TextField = "text",
    tokens: opt.Tokens = defaults.DEFAULT_EVAL_TOKENS,
    context: opt.Context = defaults.DEFAULT_CONTEXT,
    batch_size: opt.BatchSize = defaults.DEFAULT_BATCH_SIZE,
    device: opt.Device = "cpu",
    dtype: opt.ModelDtype = "float32",
    activations: Annotated[
        str | None,
        typer.Option(help="cached activations (.safetensors or .npy) instead of a model"),
    ] = None,
    include_special: Annotated[bool, typer.Option(help="count BOS/EOS/pad positions too")] = False,
    always_on_threshold: Annotated[
        float, typer.Option(help="density above which a feature is always-on")
    ] = 0.80,
    explain_tokens: Annotated[
        int, typer.Option(help="tokens examined for always-on features' strongest/weakest tokens")
    ] = 16_384,
    downstream: Annotated[
        bool,
        typer.Option(help="measure loss recovered / KL by splicing each SAE into the model"),
    ] = True,
    first_letter_absorption: Annotated[
        bool,
        typer.Option(help="also measure SAEBench's probe-based first-letter absorption (slow)"),
    ] = False,
    first_letter_words: Annotated[
        int, typer.Option(help="words sampled for first-letter absorption")
    ] = 4000,
    policy: Annotated[
        str | None, typer.Option(help="TOML file overriding the grading thresholds")
    ] = None,
    fail_on: Annotated[
        str | None, typer.Option(help="exit 1 when an SAE is graded poor | has warnings")
    ] = None,
    seed: Annotated[int, typer.Option()] = 0,
    out: Annotated[Path, typer.Option(help="report JSON path")] = Path("run.json"),
    md: Annotated[Path | None, typer.Option("--md", help="also write Markdown here")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="also write HTML here")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the report JSON to stdout")
    ] = False,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
    resume: Annotated[
        bool,
        typer.Option(
            help="continue an interrupted run from its state file, <out>.partial.safetensors "
            "(same options and SAEs required). Ctrl-C or SIGTERM during the main pass saves "
            "that file and exits 130; it is also saved every --checkpoint-minutes and deleted "
            "once the report is written. The always-on explanations, --compare-corpus and "
            "--first-letter-absorption passes rerun from scratch on resume",
        ),
    ] = False,
    checkpoint_minutes: Annotated[
        float, typer.Option(help="save the main pass's state this often (0: only on Ctrl-C)")
    ] = 5.0,
    device_map: Annotated[
        str | None,
        typer.Option(help="spread a model larger than one device with accelerate: auto | "
                     "balanced | sequential (each SAE runs on its site's device)"),
    ] = None,
    quantize: Annotated[
        str | None, typer.Option(help="load the model's weights in 8bit | 4bit (bitsandbytes)")
    ] = None,
    absorption_sample: Annotated[
        int | None,
        typer.Option(help="estimate absorption from N sampled features, with a 95% CI "
                     "(each one's max still exact); default: exact over all features"),
    ] = None,
) -> None:
    """Measure, grade and explain one or more SAEs in one streaming pass.

    Interrupted (Ctrl-C, SIGTERM), it saves its progress beside the report as
    <out>.partial.safetensors: rerun the same command with --resume to continue."""
    from saedoctor.diagnose import DiagnoseOptions, diagnose_and_write
    from saedoctor.metrics.absorption import absorption_settings

    with handled_errors():
        _check_choice("--fail-on", fail_on, FAIL_LEVELS)
        opts = DiagnoseOptions(
            model=model, saes=list(sae or []), layer=layer, site=site, corpus=corpus,
            compare_corpus=compare_corpus, text_field=text_field, tokens=tokens,
            context=context, batch_size=batch_size, device=device, dtype=dtype,
            activations=activations, include_special=include_special,
            always_on_threshold=always_on_threshold, explain_tokens=explain_tokens,
            downstream=downstream, first_letter_absorption=first_letter_absorption,
            first_letter_words=first_letter_words,
            policy=policy, seed=seed, quiet=quiet, resume=resume,
            checkpoint_minutes=checkpoint_minutes, device_map=device_map, quantize=quantize,
        )  # fmt: skip
        if absorption_sample is not None and absorption_sample < 2:
            raise InputError("--absorption-sample: expected at least 2 features")
        with absorption_settings(sample=absorption_sample, seed=seed):
            document = diagnose_and_write(opts, out)
        _write_views(document, md, html)
        if as_json:
            typer.echo(json.dumps(document, indent=1))
        else:
            _print_terminal(document)
            typer.echo(f"report: {out}")
    if should_fail(document, fail_on):
        raise typer.Exit(1)


def _write_views(document: dict, md: Path | None, html: Path | None) -> None:
    from saedoctor.atomic import atomic_write_bytes
    from saedoctor.report.render import render

    if md is not None:
        atomic_write_bytes(md, render(document, "md").encode())
    if html is not None:
        atomic_write_bytes(html, render(document, "html").encode())


def _print_terminal(document: dict) -> None:
    from saedoctor.report.terminal import print_report

    print_report(document)


@app.command()
def report(
    run_json: Annotated[Path, typer.Argument(help="a report written by `saedoctor diagnose`")],
    md: Annotated[Path | None, typer.Option("--md", help="write Markdown here")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="write HTML here")] = None,
    terminal: Annotated[bool, typer.Option("--terminal", help="print the terminal view")] = False,
    fail_on: Annotated[
        str | None, typer.Option(help="exit 1 when an SAE is graded poor | has warnings")
    ] = None,
) -> None:
    """Re-render a report (terminal, Markdown, HTML) from its JSON without recomputing."""
    from saedoctor.report.document import read_report

    with handled_errors():
        _check_choice("--fail-on", fail_on, FAIL_LEVELS)
        document = read_report(run_json)
        _write_views(document, md, html)
        if terminal or (md is None and html is None):
            _print_terminal(document)
    if should_fail(document, fail_on):
        raise typer.Exit(1)


@app.command()
def compare(
    reports: Annotated[list[Path], typer.Argument(help="two or more report JSON files")],
    md: Annotated[Path | None, typer.Option("--md", help="write Markdown here")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="write HTML here")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the comparison JSON")] = False,
) -> None:
    """SAEs side by side: the layer-by-layer table and the model-vs-model comparison."""
    from saedoctor.atomic import atomic_write_bytes
    from saedoctor.report import compare as cmp
    from saedoctor.report.document import read_report

    with handled_errors():
        documents = [read_report(p) for p in reports]
        comparison = cmp.compare_reports(documents, [str(p) for p in reports])
        if md is not None:
            atomic_write_bytes(md, cmp.render_compare_markdown(comparison).encode())
        if html is not None:
            atomic_write_bytes(html, cmp.render_compare_html(comparison).encode())
        if as_json:
            typer.echo(json.dumps(comparison, indent=1))
        elif md is None and html is None:
            cmp.render_compare_terminal(comparison)


@app.command(name="filter")
def filter_(
    run_json: Annotated[Path, typer.Argument(help="a report written by `saedoctor diagnose`")],
    out: Annotated[Path | None, typer.Option(help="write the filter JSON here")] = None,
) -> None:
    """Always-on feature ids per SAE / layer, as JSON for circuit-tracing tools."""
    from saedoctor.atomic import atomic_write_json
    from saedoctor.report.document import read_report
    from saedoctor.report.filter import always_on_filter

    with handled_errors():
        result = always_on_filter(read_report(run_json))
        if out is not None:
            atomic_write_json(out, result)
        typer.echo(json.dumps(result, indent=1))


from saedoctor.activations.cache_cli import register as register_cache  # noqa: E402
from saedoctor.train.cli import register  # noqa: E402 - train/demo live in train/cli.py

register(app)
register_cache(app)


@app.command()
def version() -> None:
    """Print the saedoctor version."""
    from saedoctor import __version__

    typer.echo(__version__)


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
