"""`saedoctor report`, `compare` and `filter`: views of reports already written."""

from __future__ import annotations

import json
from dataclasses import dataclass
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


@dataclass(frozen=True)
class FeatureOptions:
    """The options that only `compare --features` takes."""

    report_a: Path | None
    report_b: Path | None
    threshold: float | None
    method: str
    out: Path | None


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
    feature: Annotated[int | None, typer.Option(
        "--feature", help="print this feature's card (each SAE that has one) instead")] = None,
    sae: Annotated[str | None, typer.Option(
        "--sae", help="with --feature: only this SAE (name, name prefix or index)")] = None,
    fail_on: FailOn = None,
) -> None:  # fmt: skip
    """Re-render a report (terminal, Markdown, HTML) from its JSON without recomputing."""
    from saedoctor.report.document import read_report

    with handled_errors():
        check_fail_level(fail_on)
        if sae is not None and feature is None:
            raise InputError("--sae: only with --feature F (which SAE's card to print)")
        document = read_report(run_json)
        found = None if feature is None else _find_cards(document, feature, sae, str(run_json))
        write_views(document, md, html)
        if found is not None:
            _print_cards(found)
        elif terminal or (md is None and html is None):
            print_terminal(document)
    exit_if_gated(document, fail_on)


def _find_cards(document: dict, feature: int, sae: str | None, source: str) -> list:
    """Before any view is written: a missing card is bad input (exit 2), nothing written."""
    from saedoctor.report.cards import find_cards

    return find_cards(document, feature, sae, source)


def _print_cards(found: list) -> None:
    from rich.console import Console

    from saedoctor.report.cards_terminal import print_card

    console = Console()
    for cards, card in found:
        print_card(cards, card, console)


def compare_command(
    reports: Annotated[list[Path], typer.Argument(
        help="two or more report JSON files; with --features, two dictionaries A B")],
    md: Annotated[Path | None, typer.Option("--md", help="write Markdown here")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="write HTML here")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the comparison JSON")] = False,
    features: Annotated[bool, typer.Option(
        "--features", help="match the decoder rows of two dictionaries A B (any format "
                           "`diagnose` reads): shared features, PW-MCC, born/died")] = False,
    report_a: Annotated[Path | None, typer.Option(
        "--report-a", help="--features: A's diagnose report (its always-on / dead ids)")] = None,
    report_b: Annotated[Path | None, typer.Option(
        "--report-b", help="--features: B's diagnose report")] = None,
    threshold: Annotated[float | None, typer.Option(
        help="--features: cosine at or above which two features are the same",
        show_default="0.7")] = None,
    method: Annotated[str, typer.Option(
        help="--features: auto (Hungarian when the cosine matrix fits 1 GiB) | hungarian | "
             "best-match")] = "auto",
    out: Annotated[Path | None, typer.Option(
        "--out", help="--features: write the comparison JSON here")] = None,
) -> None:  # fmt: skip
    """SAEs side by side: the layer-by-layer table and the model-vs-model comparison; with
    --features, how many features two dictionaries (two seeds, two checkpoints) share."""
    with handled_errors():
        if features:
            feature_options = FeatureOptions(report_a, report_b, threshold, method, out)
            _compare_features(reports, feature_options, md, html, as_json)
            return
        _refuse_feature_options(report_a, report_b, threshold, method, out)
        _compare_reports(reports, md, html, as_json)


def _compare_reports(reports: list[Path], md: Path | None, html: Path | None,
                     as_json: bool) -> None:  # fmt: skip
    from saedoctor.atomic import atomic_write_bytes
    from saedoctor.report import compare as cmp
    from saedoctor.report.document import read_report

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


def _refuse_feature_options(report_a: Path | None, report_b: Path | None,
                            threshold: float | None, method: str,
                            out: Path | None) -> None:  # fmt: skip
    given = [flag for flag, value, unset in (
        ("--report-a", report_a, None), ("--report-b", report_b, None),
        ("--threshold", threshold, None), ("--method", method, "auto"),
        ("--out", out, None)) if value != unset]  # fmt: skip
    if given:
        raise InputError(f"{given[0]}: only with --features A B (two dictionaries)")


def _compare_features(paths: list[Path], opts: FeatureOptions, md: Path | None,
                      html: Path | None, as_json: bool) -> None:  # fmt: skip
    from saedoctor.atomic import atomic_write_bytes, atomic_write_json
    from saedoctor.report import feature_match_render as render
    from saedoctor.report.feature_compare import compare_features

    if len(paths) != 2:
        raise InputError(f"--features: {len(paths)} paths given; expected two dictionaries A B")
    if html is not None:
        raise InputError("--html: not available with --features; use --md or --json")
    comparison = compare_features(paths[0], paths[1], threshold=opts.threshold,
                                  method=opts.method, report_a=opts.report_a,
                                  report_b=opts.report_b)  # fmt: skip
    document = render.as_json(comparison)
    if opts.out is not None:
        atomic_write_json(opts.out, document)
    if md is not None:
        atomic_write_bytes(md, render.markdown(comparison).encode())
    if as_json:
        typer.echo(json.dumps(document, indent=1))
    else:
        render.terminal(comparison)


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
