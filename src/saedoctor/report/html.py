"""The HTML view: one self-contained page (inline CSS, plotly.js inlined) that opens offline."""

from __future__ import annotations

import re
from functools import lru_cache
from html import escape
from typing import Any

import plotly.graph_objects as go

from saedoctor.report import cards_html, plots, sections
from saedoctor.report.cards import EntryCards, dense_table, entry_cards
from saedoctor.report.compare_tables import layer_table, side_by_side_table
from saedoctor.report.comparison import compare_reports
from saedoctor.report.fields import (
    config_text,
    grade_of,
    grade_status,
    grade_text,
    prescription_text,
    site_text,
)

# No fetches at all: everything the page needs is inline (data: URLs for plotly's images).
CSP = ("default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; "
       "style-src 'unsafe-inline'; img-src data: blob:; font-src data:")

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;
  margin:0;background:#f6f8fa}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px;background:#fff}
h1{margin:0 0 8px}h2{border-bottom:2px solid #d0d7de;padding-bottom:4px;margin-top:40px}
h3{margin:22px 0 8px}ul.run{columns:2;margin:0;padding-left:18px;color:#57606a}
nav a{margin-right:14px}
.table-wrap{overflow-x:auto}
table{border-collapse:collapse;margin:6px 0 4px;font-size:14px}
th,td{border:1px solid #d0d7de;padding:4px 9px;text-align:left;vertical-align:top}
th{background:#f0f3f6}td:first-child{font-weight:600}
.note{font-size:13px;color:#57606a;font-style:italic;margin:2px 0 10px}
.st-excellent{background:#dcf3e1;color:#14532d}.st-good{background:#d8f0f6;color:#0b4f5e}
.st-warning{background:#fdf0d2;color:#7a4b00}.st-critical{background:#f9dcdb;color:#8a1f1b}
.st-not-measured{color:#8c959f;font-style:italic}
.grade{display:inline-block;padding:6px 14px;border-radius:6px;font-weight:700;margin:8px 0}
.grade:not([class*=st-]){background:#eaeef2}
.meta{color:#57606a;margin:2px 0}
.diag{border-left:5px solid #8c959f;background:#f6f8fa;padding:8px 14px;margin:10px 0}
.diag.sev-critical{border-color:#d43f3a}.diag.sev-warning{border-color:#e69b00}
.diag.sev-info{border-color:#1798b0}.diag h4{margin:2px 0 6px}
.diag .rx li{color:#14532d}
.sd-plot{margin:10px 0 18px;border:1px solid #eaeef2;border-radius:6px}
.grid{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1.15fr);gap:18px;
  align-items:start}
@media (max-width:900px){.grid{grid-template-columns:1fr}}
footer{margin-top:40px;color:#8c959f;font-size:13px}
"""


@lru_cache(maxsize=1)
def plotly_js() -> str:
    """plotly's offline bundle: ~4.5 MB, read once per process."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def status_class(status: str | None) -> str:
    return f"st-{status.replace(' ', '-')}" if status else ""


def html_table(table: sections.Table, cards: EntryCards | None = None) -> str:
    """`cards`: the entry's feature cards, so the feature ids a cell names link to them."""
    head = "".join(f"<th>{escape(h)}</th>" for h in table.headers)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="{status_class(c.status)}">{cell_html(c, cards)}</td>' if c.status
            else f"<td>{cell_html(c, cards)}</td>" for c in row) + "</tr>"
        for row in table.rows)
    note = f'<p class="note">{escape(table.note)}</p>' if table.note else ""
    return (f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>{note}")


def cell_html(cell: sections.Cell, cards: EntryCards | None) -> str:
    return cards_html.link_ids(escape(cell.text), cell.ids, cards)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "x"


class Plots:
    """Gives every figure a stable, unique div id (plot-<n>-<kind>) and a countable class."""

    def __init__(self) -> None:
        self.count = 0

    def div(self, fig: go.Figure, kind: str) -> str:
        self.count += 1
        div_id = f"plot-{self.count}-{kind}"
        inner = fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                            config={"displaylogo": False, "responsive": True})
        return f'<div class="sd-plot sd-plot-{kind}" data-plot="{div_id}">{inner}</div>'


def html_diagnoses(diagnoses: list[dict[str, Any]], cards: EntryCards | None = None) -> str:
    out = []
    for d in diagnoses:
        evidence = "".join(f"<li>{cards_html.link_mentions(escape(e), cards)}</li>"
                           for e in d.get("evidence") or [])  # fmt: skip
        rx = "".join(f"<li>{escape(prescription_text(p))}</li>"
                     for p in d.get("prescriptions") or [])
        out.append(
            f'<div class="diag sev-{escape(d["severity"])}">'
            f'<h4>[{escape(d["severity"])}] {escape(d["title"])}</h4>'
            + (f"<ul>{evidence}</ul>" if evidence else "")
            + (f"<p>{escape(d['explanation'])}</p>" if d.get("explanation") else "")
            + (f'<p>Prescriptions:</p><ul class="rx">{rx}</ul>' if rx else "")
            + "</div>")
    return "".join(out)


def nonfinite_html(entry: dict[str, Any]) -> list[str]:
    warning = sections.nonfinite_warning(entry)
    return [f'<p class="st-warning">{escape(warning)}</p>'] if warning else []


def html_sae(document: dict[str, Any], entry: dict[str, Any], index: int, figs: Plots) -> str:
    grade_cls = status_class(grade_status(grade_of(entry)))
    cards = entry_cards(entry, index)
    parts = [
        f'<section class="sae" id="sae-{index}"><h2>{escape(entry["name"])}</h2>',
        f'<p class="meta">{escape(site_text(entry))}</p>',
        f'<p class="meta">{escape(config_text(entry))}</p>',
        f'<p class="grade {grade_cls}">{escape(grade_text(entry))}</p>',
        *nonfinite_html(entry),
        '<div class="grid"><div>', html_table(sections.metric_table(entry), cards), "</div><div>",
        figs.div(plots.bands_figure(document, entry), "bands"), "</div></div>",
        figs.div(plots.density_histogram_figure(entry, document["run"]), "density"),
    ]
    explanations = sections.explanation_table(entry)
    if explanations:
        parts += ["<h3>Always-on features explained</h3>", html_table(explanations, cards)]
    dense = dense_table(cards)
    if dense:
        parts += ["<h3>Dense latents</h3>", html_table(dense, cards)]
    if entry.get("diagnoses"):
        parts += ["<h3>Diagnoses</h3>", html_diagnoses(entry["diagnoses"], cards)]
    prescriptions = sections.prescription_table(entry.get("prescriptions") or [])
    if prescriptions:
        parts += ["<h3>Prescriptions</h3>", html_table(prescriptions)]
    comparison = sections.corpus_table(entry, document["run"].get("corpus"))
    if comparison:
        parts += ["<h3>Corpus comparison</h3>", html_table(comparison)]
    return "".join(parts) + cards_html.browser_section(cards) + "</section>"


def html_overview(document: dict[str, Any], figs: Plots) -> str:
    comparison = compare_reports([document], ["report"], validate=False)
    sweep = plots.sweep_figure(comparison["saes"])
    return ('<section id="overview"><h2>Overview</h2><h3>SAEs side by side</h3>'
            + html_table(side_by_side_table(comparison))
            + "<h3>Layer-by-layer summary</h3>" + html_table(layer_table(comparison))
            + (figs.div(sweep, "sweep") if sweep else "") + "</section>")


def html_sweep(document: dict[str, Any]) -> str:
    sweep = document.get("sweep") or {}
    if not sweep.get("diagnoses") and not sweep.get("best"):
        return ""
    best = (f'<p class="grade st-excellent">best SAE: {escape(sweep["best"])}</p>'
            if sweep.get("best") else "")
    return ('<section id="sweep"><h2>Sweep findings</h2>' + best
            + html_diagnoses(sweep.get("diagnoses") or []) + "</section>")


def page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}{cards_html.CSS}</style>"
        f'<script type="text/javascript">{plotly_js()}</script></head>'
        f"<body><main>{body}"
        "<footer>Rendered by saedoctor from the run's JSON report; works offline.</footer>"
        "</main></body></html>\n"
    )


def render_html(document: dict[str, Any]) -> str:
    figs = Plots()
    model = (document["run"].get("model") or {}).get("name") or "cached activations"
    run = "".join(f"<li>{escape(line)}</li>" for line in sections.run_lines(document))
    nav = " ".join(f'<a href="#sae-{i}">{escape(e["name"])}</a>'
                   for i, e in enumerate(document["saes"]))
    body = [f"<header><h1>saedoctor report: {escape(model)}</h1>",
            f'<ul class="run">{run}</ul></header>', f"<nav>{nav}</nav>"]
    if len(document["saes"]) > 1:
        body.append(html_overview(document, figs))
    body += [html_sae(document, e, i, figs) for i, e in enumerate(document["saes"])]
    tset = sections.transcoder_set_table(document)
    if tset is not None:
        body.append(f'<section id="transcoder-set"><h2>{escape(sections.SET_TITLE)}</h2>'
                    + html_table(tset) + "</section>")
    body += [f'<section class="clt"><h2>{escape(title)}</h2>{html_table(table)}</section>'
             for title, table in sections.clt_tables(document)]
    body.append(html_sweep(document))
    if any((e.get("cards") or {}).get("features") for e in document["saes"]):
        body.append(f"<script>{cards_html.SCRIPT}</script>")
    return page(f"saedoctor report: {model}", "".join(body))
