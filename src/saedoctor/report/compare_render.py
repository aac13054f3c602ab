"""Drawing a comparison document (report/comparison.py) in the terminal, Markdown or HTML."""

from __future__ import annotations

from html import escape
from typing import Any

from rich.console import Console
from rich.text import Text

from saedoctor.report import plots
from saedoctor.report.compare_tables import (
    ModelBlock,
    layer_table,
    model_blocks,
    model_table,
    side_by_side_table,
    significance_table,
)
from saedoctor.report.html import Plots, html_table, page, status_class
from saedoctor.report.markdown import md_escape, md_table
from saedoctor.report.terminal import STYLES, show


def note_lines(comparison: dict[str, Any]) -> list[str]:
    return [f"note ({', '.join(n['sources'])}): {n['note']}"
            for n in comparison.get("notes") or []]


def compare_terminal(comparison: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    console.print(Text("comparing: " + ", ".join(comparison["sources"])))
    for line in note_lines(comparison):
        console.print(Text(line, style="italic"))
    console.print(Text("model verdicts", style="bold underline"))
    for block in model_blocks(comparison):
        terminal_block(console, block)
    show(console, side_by_side_table(comparison), "SAEs side by side")
    if (tests := significance_table(comparison)) is not None:
        show(console, tests, "is B different from A?")
    show(console, layer_table(comparison), "layer-by-layer summary")
    show(console, model_table(comparison), "model vs model")


def terminal_block(console: Console, block: ModelBlock) -> None:
    title = Text(f"{block.model}: ", style="bold")
    title.append(block.verdict.text, style=f"bold {STYLES.get(block.verdict.status or '', '')}")
    console.print(title)
    for label, text in block.lines:
        console.print(Text(f"  {label}: {text}"))


def compare_markdown(comparison: dict[str, Any]) -> str:
    out = ["# saedoctor comparison", ""]
    out += [f"- {md_escape(source)}" for source in comparison["sources"]]
    out += [f"\n_{md_escape(line)}_" for line in note_lines(comparison)]
    out += ["", "## Model verdicts"]
    for block in model_blocks(comparison):
        out += ["", f"### {md_escape(block.model)}: {md_escape(block.verdict.text)}", ""]
        out += [f"- **{md_escape(label)}**: {md_escape(text)}" for label, text in block.lines]
    out += ["", "## SAEs side by side", "",
            md_table(side_by_side_table(comparison), annotate=True),
            *(["", "## Is B different from A?", "", md_table(tests)]
              if (tests := significance_table(comparison)) is not None else []),
            "", "## Layer-by-layer summary", "", md_table(layer_table(comparison)),
            "", "## Model vs model", "", md_table(model_table(comparison))]
    return "\n".join(out) + "\n"


def html_block(block: ModelBlock) -> str:
    items = "".join(f"<li><b>{escape(label)}</b>: {escape(text)}</li>"
                    for label, text in block.lines)
    verdict = (f'<span class="{status_class(block.verdict.status)}">'
               f"{escape(block.verdict.text)}</span>")
    return (f'<section class="model-verdict"><h3>{escape(block.model)}: {verdict}</h3>'
            f"<ul>{items}</ul></section>")


def compare_html(comparison: dict[str, Any]) -> str:
    figs = Plots()
    sweep = plots.sweep_figure(comparison["saes"])
    sources = "".join(f"<li>{escape(source)}</li>" for source in comparison["sources"])
    notes = "".join(f'<p class="note">{escape(line)}</p>' for line in note_lines(comparison))
    body = ("<header><h1>saedoctor comparison</h1>"
            f'<ul class="run">{sources}</ul>{notes}</header>'
            "<h2>Model verdicts</h2>" + "".join(html_block(b) for b in model_blocks(comparison))
            + "<h2>SAEs side by side</h2>" + html_table(side_by_side_table(comparison))
            + ("<h2>Is B different from A?</h2>" + html_table(tests)
               if (tests := significance_table(comparison)) is not None else "")
            + "<h2>Layer-by-layer summary</h2>" + html_table(layer_table(comparison))
            + (figs.div(sweep, "sweep") if sweep else "")
            + "<h2>Model vs model</h2>" + html_table(model_table(comparison)))
    return page("saedoctor comparison", body)
