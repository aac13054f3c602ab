"""The terminal view of a report: per SAE its metrics in status colours, grade, explanations,
diagnoses and prescriptions; for several SAEs also the guide's layer table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.rule import Rule
from rich.table import Table as RichTable
from rich.text import Text

from saedoctor.report import sections
from saedoctor.report.cards import IDS_LISTED, dense_table, entry_cards
from saedoctor.report.compare_tables import layer_table, side_by_side_table
from saedoctor.report.comparison import compare_reports
from saedoctor.report.fields import (
    config_text,
    format_value,
    grade_of,
    grade_status,
    grade_text,
    prescription_text,
    site_text,
)

# Text objects, never markup strings: SAE names and tokens may contain "[" (rich markup).
STYLES = {
    "excellent": "green", "good": "cyan", "warning": "yellow", "critical": "red",
    "not measured": "dim", "info": "cyan",
}


def rich_table(table: sections.Table, title: str = "") -> RichTable:
    out = RichTable(title=title or None, title_justify="left")
    for i, header in enumerate(table.headers):
        out.add_column(header, style="bold" if i == 0 else None, overflow="fold")
    for row in table.rows:
        out.add_row(*(Text(cell.text, style=STYLES.get(cell.status or "", "")) for cell in row))
    return out


def show(console: Console, table: sections.Table, title: str = "") -> None:
    """The table, then its note on its own line (a rich caption would wrap to table width)."""
    console.print(rich_table(table, title))
    if table.note:
        console.print(Text(table.note, style="italic"))


def print_diagnoses(diagnoses: list[dict[str, Any]], console: Console) -> None:
    for diagnosis in diagnoses:
        severity = diagnosis["severity"]
        line = Text(f"[{severity}] ", style=f"bold {STYLES.get(severity, '')}")
        line.append(diagnosis["title"], style="bold")
        console.print(line)
        for item in diagnosis.get("evidence") or []:
            console.print(Text(f"  • {item}"))
        if diagnosis.get("explanation"):
            console.print(Text(f"  {diagnosis['explanation']}", style="italic"))
        for p in diagnosis.get("prescriptions") or []:
            console.print(Text("  → " + prescription_text(p), style="green"))


def print_cards_summary(entry: dict[str, Any], index: int, console: Console) -> None:
    """The dense-latent table and which features have cards (`--feature F` prints one)."""
    cards = entry_cards(entry, index)
    dense = dense_table(cards)
    if dense:
        show(console, dense, "dense latents")
    if cards.cards:
        ids = format_value([c.feature for c in cards.cards], "ids", IDS_LISTED)
        console.print(Text(f"feature cards: {ids} (saedoctor report … --feature F)"))


def print_sae(entry: dict[str, Any], console: Console, corpus: str | None = None,
              index: int = 0) -> None:  # fmt: skip
    console.print(Rule(Text(entry["name"], style="bold")))
    console.print(Text(site_text(entry)))
    console.print(Text(config_text(entry)))
    warning = sections.nonfinite_warning(entry)
    if warning:
        console.print(Text(warning, style="bold yellow"))
    show(console, sections.metric_table(entry))
    colour = STYLES.get(grade_status(grade_of(entry)) or "", "")
    console.print(Text(grade_text(entry), style=f"bold {colour}"))
    explanations = sections.explanation_table(entry)
    if explanations:
        show(console, explanations, "always-on features explained")
    if entry.get("diagnoses"):
        console.print(Text("diagnoses", style="bold underline"))
        print_diagnoses(entry["diagnoses"], console)
    prescriptions = sections.prescription_table(entry.get("prescriptions") or [])
    if prescriptions:
        show(console, prescriptions, "prescriptions (saedoctor train accepts these)")
    comparison = sections.corpus_table(entry, corpus)
    if comparison:
        show(console, comparison, "corpus comparison")
    print_cards_summary(entry, index, console)


def print_overview(document: dict[str, Any], console: Console) -> None:
    """Several SAEs (a layer sweep): side by side, then the guide's layer table."""
    comparison = compare_reports([document], ["report"], validate=False)
    show(console, side_by_side_table(comparison), "SAEs side by side")
    show(console, layer_table(comparison), "layer-by-layer summary")


def print_sweep(document: dict[str, Any], console: Console) -> None:
    sweep = document.get("sweep") or {}
    if not sweep.get("diagnoses") and not sweep.get("best"):
        return
    console.print(Rule(Text("sweep findings", style="bold")))
    if sweep.get("best"):
        console.print(Text(f"best SAE: {sweep['best']}", style="bold green"))
    print_diagnoses(sweep.get("diagnoses") or [], console)


def print_report(document: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    for line in sections.run_lines(document):
        console.print(Text(line))
    if len(document["saes"]) > 1:
        print_overview(document, console)
    for index, entry in enumerate(document["saes"]):
        print_sae(entry, console, document["run"].get("corpus"), index)
    tset = sections.transcoder_set_table(document)
    if tset is not None:  # a rule, not a table title: a title wraps to the narrow table
        console.print(Rule(Text(sections.SET_TITLE, style="bold")))
        show(console, tset)
    for title, table in sections.clt_tables(document):
        console.print(Rule(Text(title, style="bold")))
        show(console, table)
    print_sweep(document, console)
