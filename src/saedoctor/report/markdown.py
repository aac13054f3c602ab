"""The Markdown view of a report (same content as the terminal view, for issues and PRs)."""

from __future__ import annotations

from typing import Any

from saedoctor.report import sections
from saedoctor.report.cards import (
    Card,
    EntryCards,
    class_text,
    context_text,
    dense_table,
    density_text,
    entry_cards,
    visible_token,
)
from saedoctor.report.compare_tables import layer_table, side_by_side_table
from saedoctor.report.comparison import compare_reports
from saedoctor.report.fields import config_text, grade_text, prescription_text, site_text

# The guide's own markers, so a pasted report reads like the guide.
MARKS = {"excellent": "✅", "good": "🆗", "warning": "⚠️", "critical": "❌"}


def md_escape(text: str) -> str:
    """A '|' would split a table cell, a newline end the table, '<' start raw HTML."""
    for raw, safe in (("\\", "\\\\"), ("|", "\\|"), ("`", "\\`"), ("<", "&lt;"), (">", "&gt;"),
                      ("\n", " ")):
        text = text.replace(raw, safe)
    return text


def md_cell(cell: sections.Cell, annotate: bool) -> str:
    text = md_escape(cell.text)
    mark = MARKS.get(cell.status or "")
    if mark and (annotate or cell.text == cell.status):
        return f"{text} {mark}"
    return text


def md_table(table: sections.Table, annotate: bool = False) -> str:
    """annotate: mark value cells with their status where no status column says it."""
    lines = [
        "| " + " | ".join(md_escape(h) for h in table.headers) + " |",
        "|" + "|".join("---" for _ in table.headers) + "|",
    ]
    lines += ["| " + " | ".join(md_cell(c, annotate) for c in row) + " |" for row in table.rows]
    if table.note:
        lines += ["", f"_{md_escape(table.note)}_"]
    return "\n".join(lines)


def md_diagnoses(diagnoses: list[dict[str, Any]], level: str = "####") -> list[str]:
    out = []
    for d in diagnoses:
        mark = MARKS.get(d["severity"], "ℹ️")
        out += ["", f"{level} {mark} [{d['severity']}] {md_escape(d['title'])}", ""]
        out += [f"- {md_escape(item)}" for item in d.get("evidence") or []]
        if d.get("explanation"):
            out += ["", md_escape(d["explanation"])]
        if d.get("prescriptions"):
            out += ["", "Prescriptions:"]
            out += [f"- {md_escape(prescription_text(p))}" for p in d["prescriptions"]]
    return out


def md_token(token: str) -> str:
    """A token inside running text: newlines visible, nothing that starts emphasis or a link."""
    text = md_escape(token.replace("&", "&amp;").replace("\n", "↵"))
    for raw in ("*", "_", "[", "]"):
        text = text.replace(raw, "\\" + raw)
    return text


def md_focus(token: str) -> str:
    """**bold**, its surrounding spaces outside the stars (Markdown ignores '** x**')."""
    core = token.strip(" ")
    if not core:
        return f"**{visible_token(token)}**"
    lead, trail = token[: len(token) - len(token.lstrip(" "))], token[len(token.rstrip(" ")) :]
    return f"{lead}**{md_token(core)}**{trail}"


def md_card(cards: EntryCards, card: Card) -> str:
    """One line: the feature, why it has a card, its density and top context."""
    facts = [", ".join(card.why) or "–", f"density {density_text(card)}"]
    cls = class_text(cards, card)
    facts += [md_escape(cls)] if cls else []
    top = card.top_contexts[0] if card.top_contexts else None
    text = context_text(top, md_focus, md_token).strip() if top else "_no context recorded_"
    return f"- feature {card.feature} ({'; '.join(facts)}): {text}"


def md_cards(entry: dict[str, Any], index: int) -> list[str]:
    cards = entry_cards(entry, index)
    dense = dense_table(cards)
    out = ["", "### Dense latents", "", md_table(dense)] if dense else []
    if cards.cards:
        out += ["", "### Feature cards", "", *(md_card(cards, c) for c in cards.cards)]
    return out


def md_sae(entry: dict[str, Any], corpus: str | None = None, index: int = 0) -> list[str]:
    out = ["", f"## {md_escape(entry['name'])}", "", md_escape(site_text(entry)) + "  ",
           md_escape(config_text(entry)), "", "### Metrics", "",
           md_table(sections.metric_table(entry)), "", f"**{md_escape(grade_text(entry))}**"]
    warning = sections.nonfinite_warning(entry)
    if warning:
        out[5:5] = ["", f"> **{md_escape(warning)}**"]  # above the metrics it qualifies
    explanations = sections.explanation_table(entry)
    if explanations:
        out += ["", "### Always-on features explained", "", md_table(explanations)]
    if entry.get("diagnoses"):
        out += ["", "### Diagnoses", *md_diagnoses(entry["diagnoses"])]
    prescriptions = sections.prescription_table(entry.get("prescriptions") or [])
    if prescriptions:
        out += ["", "### Prescriptions", "", md_table(prescriptions)]
    comparison = sections.corpus_table(entry, corpus)
    if comparison:
        out += ["", "### Corpus comparison", "", md_table(comparison)]
    return out + md_cards(entry, index)


def md_overview(document: dict[str, Any]) -> list[str]:
    comparison = compare_reports([document], ["report"], validate=False)
    return ["", "## Overview", "", "### SAEs side by side", "",
            md_table(side_by_side_table(comparison), annotate=True),
            "", "### Layer-by-layer summary", "", md_table(layer_table(comparison))]


def md_sweep(document: dict[str, Any]) -> list[str]:
    sweep = document.get("sweep") or {}
    if not sweep.get("diagnoses") and not sweep.get("best"):
        return []
    out = ["", "## Sweep findings"]
    if sweep.get("best"):
        out += ["", f"**Best SAE: {md_escape(sweep['best'])}**"]
    return out + md_diagnoses(sweep.get("diagnoses") or [], "###")


def render_markdown(document: dict[str, Any]) -> str:
    out = ["# saedoctor report", ""]
    out += [f"- {md_escape(line)}" for line in sections.run_lines(document)]
    if len(document["saes"]) > 1:
        out += md_overview(document)
    for index, entry in enumerate(document["saes"]):
        out += md_sae(entry, document["run"].get("corpus"), index)
    tset = sections.transcoder_set_table(document)
    if tset is not None:
        out += ["", f"## {sections.SET_TITLE.capitalize()}", "", md_table(tset)]
    for title, table in sections.clt_tables(document):
        out += ["", f"## {md_escape(title)}", "", md_table(table)]
    out += md_sweep(document)
    return "\n".join(out) + "\n"
