"""Drawing a comparison document (report/compare.py) in the terminal, Markdown or HTML."""

from __future__ import annotations

from html import escape
from typing import Any

from rich.console import Console
from rich.text import Text

from saedoctor.report import plots
from saedoctor.report.compare_tables import layer_table, model_table, side_by_side_table
from saedoctor.report.html import Plots, html_table, page
from saedoctor.report.markdown import md_escape, md_table
from saedoctor.report.terminal import show


def compare_terminal(comparison: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    console.print(Text("comparing: " + ", ".join(comparison["sources"])))
    show(console, side_by_side_table(comparison), "SAEs side by side")
    show(console, layer_table(comparison), "layer-by-layer summary")
    show(console, model_table(comparison), "model vs model")


def compare_markdown(comparison: dict[str, Any]) -> str:
    out = ["# saedoctor comparison", ""]
    out += [f"- {md_escape(source)}" for source in comparison["sources"]]
    out += ["", "## SAEs side by side", "",
            md_table(side_by_side_table(comparison), annotate=True),
            "", "## Layer-by-layer summary", "", md_table(layer_table(comparison)),
            "", "## Model vs model", "", md_table(model_table(comparison))]
    return "\n".join(out) + "\n"


def compare_html(comparison: dict[str, Any]) -> str:
    figs = Plots()
    sweep = plots.sweep_figure(comparison["saes"])
    sources = "".join(f"<li>{escape(s)}</li>" for s in comparison["sources"])
    body = ("<header><h1>saedoctor comparison</h1>"
            f'<ul class="run">{sources}</ul></header>'
            "<h2>SAEs side by side</h2>" + html_table(side_by_side_table(comparison))
            + "<h2>Layer-by-layer summary</h2>" + html_table(layer_table(comparison))
            + (figs.div(sweep, "sweep") if sweep else "")
            + "<h2>Model vs model</h2>" + html_table(model_table(comparison)))
    return page("saedoctor comparison", body)
