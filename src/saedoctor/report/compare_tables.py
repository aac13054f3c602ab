"""The comparison document as format-neutral tables (see sections.Table)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from saedoctor.health.model_verdict import VERDICT_MARK, VERDICT_STATUS
from saedoctor.report.fields import (
    LABELS,
    NOT_MEASURED,
    ROWS,
    format_metric,
    format_value,
    grade_status,
)
from saedoctor.report.sections import Cell, Table, percent
from saedoctor.report.significance import short_verdict

VE_NOTE = "(VE): variance explained, shown where no language model measured loss recovered"


def ids_text(ids: list[int], limit: int = 8) -> str:
    if not ids:
        return "none"
    word = "Feature" if len(ids) == 1 else "Features"
    return f"{word} {format_value(ids, 'ids', max_ids=limit)}"


def side_by_side_table(comparison: dict[str, Any]) -> Table:
    """Metric rows × SAE columns, every SAE of every report."""
    saes = comparison["saes"]
    table = Table(["metric", *(s["label"] for s in saes)])
    table.rows.append([Cell("model"), *(Cell(s["model"]) for s in saes)])
    table.rows.append([Cell("site"), *(Cell(site_cell(s)) for s in saes)])
    table.rows.append([Cell("grade"), *(Cell(s["grade"] or "not graded", grade_status(s["grade"]))
                                        for s in saes)])
    for row in ROWS:
        if not any(row.key in s["metrics"] or row.key in s["not_measured"] for s in saes):
            continue
        cells = []
        for sae in saes:
            value = sae["metrics"].get(row.key)
            if value is None and row.key in sae["not_measured"]:
                cells.append(Cell(NOT_MEASURED, NOT_MEASURED))
            else:
                cells.append(Cell(format_value(value, row.fmt), sae["statuses"].get(row.key)))
        table.rows.append([Cell(row.label), *cells])
    return table


def site_cell(sae: dict[str, Any]) -> str:
    parts = [f"L{sae['layer']}" if sae["layer"] is not None else "", sae["site"] or ""]
    return " ".join(p for p in parts if p) or "–"


def layer_table(comparison: dict[str, Any]) -> Table:
    """Layer | Always-On | Loss Recovered | L0 | Dead Features | Status, as in the guide."""
    rows = comparison["layer_table"]
    show_model = len({r["model"] for r in rows}) > 1
    show_site = len({r["site"] for r in rows}) > 1
    keys = [(r["model"], r["layer"], r["site"]) for r in rows]
    show_sae = len(set(keys)) < len(keys)
    headers = (["Model"] if show_model else []) + ["Layer"] + (["Site"] if show_site else []) \
        + (["SAE"] if show_sae else []) \
        + ["Always-On", "Loss Recovered", "L0 Sparsity", "Dead Features", "Status"]
    table = Table(headers)
    for r in rows:
        recon = percent(r["loss_recovered"])
        if r["loss_recovered"] is not None and r["loss_recovered_source"] != "loss_recovered":
            recon += " (VE)"
            table.note = VE_NOTE
        table.rows.append(
            ([Cell(r["model"])] if show_model else [])
            + [Cell("–" if r["layer"] is None else str(r["layer"]))]
            + ([Cell(r["site"] or "–")] if show_site else [])
            + ([Cell(r["sae"])] if show_sae else [])
            + [Cell(ids_text(r["always_on_features"]),
                    "warning" if r["always_on_features"] else None),
               Cell(recon), Cell(format_value(r["l0"], "f2")),
               Cell(format_value(r["dead_pct"], "pct")),
               Cell(r["status"], grade_status(r["grade"]))]
        )
    return table


def model_table(comparison: dict[str, Any]) -> Table:
    """One row per model: the guide's FinLlama vs Llama-2-7B vs Goodfire comparison."""
    table = Table(["Model", "SAEs", "Layers", "Always-on (total)", "Always-on per layer",
                   "Absorption (mean, range)", "Dead % (mean)", "L0 (mean)",
                   "Loss recovered (mean)", "Grades"])
    for m in comparison["models"]:
        per_layer = "; ".join(
            f"{item['where']}: {format_value([f['id'] for f in item['features']], 'ids', 4)}"
            for item in m["always_on_per_layer"])
        spread = m["absorption_range"]
        absorption = format_value(m["mean_absorption"], "f4")
        if spread and spread[0] != spread[1]:
            absorption += f" ({spread[0]:.3f}–{spread[1]:.3f})"
        recon = percent(m["mean_reconstruction"])
        mixed = m["reconstruction_sources"] != ["loss_recovered"]
        if m["mean_reconstruction"] is not None and mixed:
            recon += " (VE)"
            table.note = VE_NOTE
        grades = ", ".join(f"{n} {g}" for g, n in m["grades"].items() if n)
        table.rows.append([
            Cell(m["model"]), Cell(str(m["saes"])),
            Cell(", ".join(str(layer) for layer in m["layers"]) or "–"),
            Cell(str(m["always_on_total"]),
                 "excellent" if m["always_on_total"] == 0 else "warning"),
            Cell(per_layer or "–"), Cell(absorption),
            Cell(format_value(m["mean_dead_pct"], "pct")), Cell(format_value(m["mean_l0"], "f2")),
            Cell(recon), Cell(grades),
        ])
    return table


@dataclass
class ModelBlock:
    """One model's verdict and what it rests on, drawn the same way by every view."""

    model: str
    verdict: Cell  # "❌ critical issue" in the verdict's status colour
    lines: list[tuple[str, str]] = field(default_factory=list)  # (label, text)


def model_blocks(comparison: dict[str, Any]) -> list[ModelBlock]:
    """The guide's model-vs-model comparison: verdict, why, always-on (with densities),
    diversity, absorption range and best SAE, one block per model."""
    blocks = []
    for m in comparison["models"]:
        verdict = Cell(f"{VERDICT_MARK[m['verdict']]} {m['verdict']}", VERDICT_STATUS[m["verdict"]])
        blocks.append(ModelBlock(m["model"], verdict, [
            ("why", m["reason"]),
            ("always-on features", always_on_text(m["always_on_per_layer"])),
            ("diversity (top-10)", range_text(m["diversity_range"], "f2")),
            ("absorption", range_text(m["absorption_range"], "g4")),
            ("best SAE", m["best"] or "–"),
        ]))
    return blocks


def always_on_text(per_layer: list[dict[str, Any]]) -> str:
    """'layer 22: 290 (91.0%), 294 (88.0%); layer 28: …': ids only ever next to their SAE."""
    found = [item for item in per_layer if item["features"]]
    if not found:
        return "none"
    return "; ".join(f"{item['where']}: " + ", ".join(feature_text(f) for f in item["features"])
                     for item in found)


def feature_text(feature: dict[str, Any]) -> str:
    spread = feature.get("density_range")
    if spread:
        low, high = (round(100 * v) for v in spread)
        return f"{feature['id']} ({low}–{high}%)"
    density = feature.get("density")
    return f"{feature['id']} ({percent(density, 1)})" if density is not None else str(feature["id"])


def range_text(span: list[float] | None, fmt: str) -> str:
    """Lowest–highest over the model's SAEs; one value when they agree or there is one SAE."""
    if span is None:
        return NOT_MEASURED
    low, high = (format_value(v, fmt) for v in span)
    return low if low == high else f"{low}–{high}"


def significance_table(comparison: dict[str, Any]) -> Table | None:
    """B against A per metric: the difference, its 95 % interval, and the verdict."""
    pairs = comparison.get("significance") or []
    if not pairs:
        return None
    table = Table(["A", "B", "metric", "Δ (B − A)", "95% CI", "verdict"])
    for pair in pairs:
        for d in pair["differences"]:
            key = d["metric"]
            ci = ("–" if d["low"] is None else
                  f"{format_metric(key, d['low'])} to {format_metric(key, d['high'])}")
            table.rows.append([Cell(pair["a"]), Cell(pair["b"]),
                               Cell(LABELS.get(d["metric"], d["metric"])),
                               Cell(format_metric(d["metric"], d["delta"])), Cell(ci),
                               Cell(short_verdict(d))])  # fmt: skip
    kinds = {("paired over the same sequence blocks" if p["paired"]
              else "independent (different tokens)") for p in pairs}  # fmt: skip
    table.note = ("tests: " + "; ".join(sorted(kinds)) + "; counts of thresholded densities "
                  "(always-on, dense, dead) by their density-implied intervals, as independent")
    return table
