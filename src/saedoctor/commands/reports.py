"""`saedoctor report`, `compare` and `filter`: views of reports already written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from saedoctor.commands.exit_status import (
    FailOn,
    check_fail_level,
    exit_if_gated,
    handled_errors,
)
from saedoctor.commands.views import print_terminal, write_views
from saedoctor.errors import InputError

RunJson = Annotated[Path, typer.Argument(help="a report written by `saedoctor diagnose`")]


def register(app: typer.Typer) -> None:
    app.command(name="report")(report_command)
    app.command(name="compare")(compare_command)
    app.command(name="filter")(filter_command)


def report_command(
    run_json: RunJson,
    md: Annotated[Path | None, typer.Option("--md", help="write Markdown here")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="write HTML here")] = None,
    terminal: Annotated[bool, typer.Option("--terminal", help="print the terminal view")] = False,
    fail_on: FailOn = None,
) -> None:
    """Re-render a report (terminal, Markdown, HTML) from its JSON without recomputing."""
    from saedoctor.report.document import read_report

    with handled_errors():
        check_fail_level(fail_on)
        document = read_report(run_json)
        write_views(document, md, html)
        if terminal or (md is None and html is None):
            print_terminal(document)
    exit_if_gated(document, fail_on)


def compare_command(
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


FILTER_FORMATS = ("saedoctor", "circuit-tracer")


def filter_command(
    run_json: RunJson,
    out: Annotated[Path | None, typer.Option(
        help="write the filter JSON here (circuit-tracer: a directory)")] = None,
    fmt: Annotated[str, typer.Option("--format", help=" | ".join(FILTER_FORMATS))] = "saedoctor",
    fold: Annotated[bool, typer.Option(
        help="circuit-tracer: also write OUT/folded, the transcoder set with each always-on "
             "feature's mean output moved into b_dec and the feature removed")] = False,
) -> None:  # fmt: skip
    """Always-on feature ids per SAE / layer, as JSON for circuit-tracing tools."""
    from saedoctor.atomic import atomic_write_json
    from saedoctor.report.document import read_report
    from saedoctor.report.filter import always_on_filter

    with handled_errors():
        if fmt not in FILTER_FORMATS:
            raise InputError(f"--format {fmt!r}: expected one of {', '.join(FILTER_FORMATS)}")
        if fold and (fmt != "circuit-tracer" or out is None):
            raise InputError("--fold: expected --format circuit-tracer and --out DIR")
        document = read_report(run_json)
        if fmt == "circuit-tracer":
            result = _circuit_tracer_filter(document, run_json, out, fold)
        else:
            result = always_on_filter(document)
            if out is not None:
                atomic_write_json(out, result)
        typer.echo(json.dumps(result, indent=1))


def _circuit_tracer_filter(document: dict, run_json: Path, out: Path | None,
                           fold: bool = False) -> dict:  # fmt: skip
    from saedoctor.report.circuit_tracer_filter import (
        circuit_tracer_exclusions,
        write_exclusions,
    )

    if out is None:
        return circuit_tracer_exclusions(document, str(run_json)).as_json()
    return write_exclusions(document, str(run_json), out, fold=fold)
