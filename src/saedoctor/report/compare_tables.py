"""The comparison document as format-neutral tables (see sections.Table)."""

from __future__ import annotations

from typing import Any

from saedoctor.report.fields import NOT_MEASURED, ROWS, format_value, grade_status
from saedoctor.report.sections import Cell, Table, percent

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
    if sae["layer"] is None and sae["site"] is None:
        return "–"
    return f"L{sae['layer']} {sae['site'] or ''}".strip()


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
            f"L{item['layer'] if item['layer'] is not None else '?'}: "
            f"{format_value(item['features'], 'ids', max_ids=4)}"
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
