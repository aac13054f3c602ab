"""`saedoctor diagnose`: its options are `DiagnoseOptions`' fields (saedoctor.options); only
what the command does with the report is declared here."""

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
from saedoctor.commands.params import with_options
from saedoctor.commands.views import print_terminal, write_views
from saedoctor.diagnose.options import DiagnoseOptions


def register(app: typer.Typer) -> None:
    app.command(name="diagnose")(diagnose_command)


@with_options(DiagnoseOptions)
def diagnose_command(
    *,
    opts: DiagnoseOptions,
    fail_on: FailOn = None,
    out: Annotated[Path, typer.Option(help="report JSON path")] = Path("run.json"),
    md: Annotated[Path | None, typer.Option("--md", help="also write Markdown here")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="also write HTML here")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the report JSON to stdout")
    ] = False,
) -> None:
    """Measure, grade and explain one or more SAEs in one streaming pass.

    Interrupted (Ctrl-C, SIGTERM), it saves its progress beside the report as
    <out>.partial.safetensors: rerun the same command with --resume to continue."""
    from saedoctor.diagnose.run import diagnose_and_write

    with handled_errors():
        check_fail_level(fail_on)
        document = diagnose_and_write(opts, out)
        write_views(document, md, html)
        if as_json:
            typer.echo(json.dumps(document, indent=1))
        else:
            print_terminal(document)
            typer.echo(f"report: {out}")
    exit_if_gated(document, fail_on)
