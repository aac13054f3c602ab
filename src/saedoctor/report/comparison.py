"""The comparison document of `saedoctor compare`: several reports' SAEs side by side, the guide's
layer-by-layer table and its model-vs-model comparison with a verdict per model.

Below every renderer: the single-report views build their sweep tables from it, and
report/compare.py draws it, so no view imports the module that imports the views.
"""

from __future__ import annotations

from statistics import fmean
from typing import Any

from saedoctor.health.model_verdict import GradedSAE, model_verdict
from saedoctor.report.always_on import always_on_features
from saedoctor.report.document import check_schema_id
from saedoctor.report.fields import (
    GRADED,
    ROWS,
    grade_of,
    headline_reconstruction,
    sae_label,
    status_by_metric,
    statuses,
)
from saedoctor.report.significance import compare_entries

COMPARE_SCHEMA = "saedoctor.compare/1"
SEVERITY = {"critical": 0, "warning": 1, "good": 2}
GRADES = ("excellent", "good", "poor", "not graded")


def compare_reports(
    documents: list[dict[str, Any]], sources: list[str], *, validate: bool = True
) -> dict[str, Any]:
    """Check every document (a mismatched schema names its file), then summarise each SAE."""
    if len(documents) != len(sources):
        raise ValueError("compare_reports: one source name per document")
    for document, source in zip(documents, sources, strict=True):
        check_schema_id(document, source)
        if validate:
            from saedoctor.report.schema import validate_report

            validate_report(document, source)
    saes = [sae_summary(doc, entry, src)
            for doc, src in zip(documents, sources, strict=True) for entry in doc["saes"]]
    disambiguate(saes)
    runs = [(doc["run"], entry) for doc in documents for entry in doc["saes"]]
    return {
        "schema": COMPARE_SCHEMA,
        "sources": list(sources),
        "notes": run_notes(documents, sources),
        "saes": saes,
        "significance": significance(runs, [s["label"] for s in saes]),
        "layer_table": layer_rows(saes),
        "models": model_rows(saes),
    }


def significance(runs: list[tuple[dict[str, Any], dict[str, Any]]],
                 labels: list[str]) -> list[dict[str, Any]]:  # fmt: skip
    """Every SAE against the first: a test per metric (report/significance.py), paired when
    both were measured on the same tokens."""
    if len(runs) < 2:
        return []
    (run_a, a), name_a = runs[0], labels[0]
    out = []
    for (run_b, b), name_b in zip(runs[1:], labels[1:], strict=True):
        same = same_tokens(run_a, run_b)
        rows = compare_entries(a, b, name_a, name_b, same_tokens=same)
        out.append({"a": name_a, "b": name_b, "paired": same and any(r.paired for r in rows),
                    "differences": [r.as_json() for r in rows]})  # fmt: skip
    return out


# The data options that decide which tokens a run measured (and so its sequence blocks).
_TOKEN_OPTIONS = ("corpus", "tokens", "context", "batch_size", "seed", "include_special",
                  "text_field", "activations")  # fmt: skip


def same_tokens(run_a: dict[str, Any], run_b: dict[str, Any]) -> bool:
    """Whether two runs measured the same tokens: same model, corpus, counted tokens and data
    options (two SAEs of one run always have)."""
    oa, ob = run_a.get("options") or {}, run_b.get("options") or {}
    return (run_a.get("corpus") == run_b.get("corpus")
            and run_a.get("tokens_counted") == run_b.get("tokens_counted")
            and (run_a.get("model") or {}).get("name") == (run_b.get("model") or {}).get("name")
            and all(oa.get(k) == ob.get(k) for k in _TOKEN_OPTIONS))  # fmt: skip


def run_notes(documents: list[dict[str, Any]], sources: list[str]) -> list[dict[str, Any]]:
    """Each distinct `run.note` once, with the files that carry it."""
    notes: dict[str, list[str]] = {}
    for document, source in zip(documents, sources, strict=True):
        if document["run"].get("note"):
            notes.setdefault(document["run"]["note"], []).append(source)
    return [{"sources": files, "note": note} for note, files in notes.items()]


def model_name(document: dict[str, Any], entry: dict[str, Any]) -> str:
    model = document["run"].get("model") or {}
    return model.get("name") or (entry.get("config") or {}).get("model_name") or "unknown model"


def sae_summary(document: dict[str, Any], entry: dict[str, Any], source: str) -> dict[str, Any]:
    site = entry.get("site") or {}
    metrics = entry["metrics"]
    reconstruction, reconstruction_source = headline_reconstruction(metrics)
    grading = entry.get("grading") or {}
    return {
        "label": sae_label(entry),
        "name": entry["name"],
        "source": source,
        "model": model_name(document, entry),
        "layer": site.get("layer"),
        "site": site.get("kind"),
        "hook_name": site.get("hook_name"),
        "metrics": {row.key: metrics[row.key] for row in ROWS if row.key in metrics},
        "not_measured": sorted(entry.get("not_measured") or {}),
        "statuses": status_by_metric(entry),
        "graded": statuses(entry),
        "grade": grade_of(entry),
        "held_back_by": list(grading.get("held_back_by") or []),
        "main_issue": main_issue(entry),
        "reconstruction": reconstruction,
        "reconstruction_source": reconstruction_source,
        "always_on": [f.as_json() for f in always_on_features(entry)],
    }


def disambiguate(saes: list[dict[str, Any]]) -> None:
    """Same SAE in two reports (e.g. two corpora): keep columns apart by their file."""
    labels = [s["label"] for s in saes]
    for sae in saes:
        if labels.count(sae["label"]) > 1:
            sae["label"] = f"{sae['label']} ({sae['source']})"


def main_issue(entry: dict[str, Any]) -> str | None:
    """The worst metric that held the grade back, in the guide's words ("high dead features")."""
    graded = statuses(entry)
    held = (entry.get("grading") or {}).get("held_back_by")
    keys = held if held else [k for k, s in graded.items() if s.get("status") in SEVERITY]
    ranked = sorted(
        (k for k in keys if k in graded),
        key=lambda k: (SEVERITY.get(graded[k].get("status"), 3),
                       GRADED.index(k) if k in GRADED else len(GRADED)),
    )
    return issue_words(ranked[0], graded[ranked[0]].get("value")) if ranked else None


def issue_words(key: str, value: float | None) -> str:
    if key == "always_on_count":
        return "multiple always-on features" if (value or 0) > 1 else "always-on feature"
    if key == "l0":
        return "L0 too high" if (value or 0) > 200 else "L0 too low"
    return {
        "diversity_top10": "low feature diversity",
        "loss_recovered": "poor reconstruction",
        "dead_pct": "high dead features",
        "absorption": "high absorption",
    }.get(key, f"{key} off target")


def status_text(sae: dict[str, Any]) -> str:
    if sae["grade"] is None:
        return "not graded"
    return f"{sae['grade']}: {sae['main_issue']}" if sae["main_issue"] else sae["grade"]


def model_order(saes: list[dict[str, Any]]) -> dict[str, int]:
    """Models in the order the reports were given, not alphabetically."""
    return {model: i for i, model in enumerate(dict.fromkeys(s["model"] for s in saes))}


def layer_key(sae: dict[str, Any], order: dict[str, int] | None = None) -> tuple:
    layer = sae["layer"]
    rank = (order or {}).get(sae["model"], 0)
    return (rank, layer is None, layer or 0, sae["site"] or "", sae["label"])


def layer_rows(saes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The guide's 'Layer-by-Layer Analysis Summary', in layer order within each model."""
    rows = []
    order = model_order(saes)
    for sae in sorted(saes, key=lambda s: layer_key(s, order)):
        metrics = sae["metrics"]
        rows.append({
            "model": sae["model"],
            "layer": sae["layer"],
            "site": sae["site"],
            "sae": sae["label"],
            "always_on_features": metrics.get("always_on_features") or [],
            "loss_recovered": sae["reconstruction"],
            "loss_recovered_source": sae["reconstruction_source"],
            "l0": metrics.get("l0"),
            "dead_pct": metrics.get("dead_pct"),
            "grade": sae["grade"],
            "main_issue": sae["main_issue"],
            "status": status_text(sae),
        })
    return rows


def mean_of(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return fmean(present) if present else None


def range_of(values: list[float | None]) -> list[float] | None:
    present = [v for v in values if v is not None]
    return [min(present), max(present)] if present else None


def model_rows(saes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model (FinLlama vs Llama-2-7B vs Goodfire in the guide): verdict, always-on, ..."""
    models: dict[str, list[dict[str, Any]]] = {}
    for sae in saes:
        models.setdefault(sae["model"], []).append(sae)
    return [model_row(name, sorted(group, key=layer_key)) for name, group in models.items()]


def verdict_labels(group: list[dict[str, Any]]) -> list[str]:
    """'layer 10' when the layer alone tells the model's SAEs apart, else their labels."""
    layers = [s["layer"] for s in group]
    if None not in layers and len(set(layers)) == len(layers):
        return [f"layer {layer}" for layer in layers]
    return [s["label"] for s in group]


def model_row(name: str, group: list[dict[str, Any]]) -> dict[str, Any]:
    grades = {g: 0 for g in GRADES}
    for sae in group:
        grades[sae["grade"] if sae["grade"] in grades else "not graded"] += 1
    labels = verdict_labels(group)
    per_layer = [{"layer": s["layer"], "sae": s["label"], "where": label,
                  "hook_name": s["hook_name"], "count": len(s["always_on"]),
                  "features": s["always_on"]} for s, label in zip(group, labels, strict=True)]
    verdict = model_verdict([GradedSAE.from_grading(label, {"statuses": s["graded"]})
                             for s, label in zip(group, labels, strict=True)])
    absorption = [s["metrics"].get("absorption") for s in group]
    return {
        "model": name,
        "saes": len(group),
        "layers": sorted({s["layer"] for s in group if s["layer"] is not None}),
        "verdict": verdict.verdict,
        "reason": verdict.reason,
        "best": verdict.best,
        "always_on_total": sum(item["count"] for item in per_layer),
        "always_on_per_layer": per_layer,
        "diversity_range": range_of([s["metrics"].get("diversity_top10") for s in group]),
        "mean_absorption": mean_of(absorption),
        "absorption_range": range_of(absorption),
        "mean_dead_pct": mean_of([s["metrics"].get("dead_pct") for s in group]),
        "mean_l0": mean_of([s["metrics"].get("l0") for s in group]),
        "mean_reconstruction": mean_of([s["reconstruction"] for s in group]),
        "reconstruction_sources": sorted({s["reconstruction_source"] for s in group
                                          if s["reconstruction"] is not None}),
        "grades": grades,
    }
