"""What a report's numbers are called and how they are written, shared by every renderer."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from saedoctor.metrics.registry import GRADED as REGISTERED_GRADED
from saedoctor.metrics.registry import METRICS

STATUSES = ("excellent", "good", "warning", "critical")
NOT_MEASURED = "not measured"
# The guide's order of importance: always-on first, it is "the #1 problem".
GRADED = REGISTERED_GRADED


class Row(NamedTuple):
    key: str
    label: str
    fmt: str  # "int", "count", "f2", "f4", "g4", "pct", "ids"


# One row per registered metric, in the registry's order (metrics/registry.py).
ROWS: tuple[Row, ...] = tuple(Row(m.key, m.label, m.fmt) for m in METRICS)
LABELS = {row.key: row.label for row in ROWS}
FORMATS = {row.key: row.fmt for row in ROWS}


def format_value(value: Any, fmt: str, max_ids: int = 8) -> str:
    """Plain text; renderers add colour. None is '–' (absent), never a fake zero."""
    if value is None:
        return "–"
    if fmt == "ids":
        shown = ", ".join(str(i) for i in value[:max_ids])
        more = f" … (+{len(value) - max_ids})" if len(value) > max_ids else ""
        return (shown + more) or "none"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if fmt in ("int", "count"):
        number = int(round(value))
        return f"{number:,d}" if fmt == "count" else str(number)
    if fmt == "pct":
        return f"{value:.2f}%"
    return {"f2": "{:.2f}", "f4": "{:.4f}", "g4": "{:.4g}"}.get(fmt, "{}").format(value)


def format_metric(key: str, value: Any) -> str:
    return format_value(value, FORMATS.get(key, "g4"))


def headline_reconstruction(metrics: dict[str, Any]) -> tuple[float | None, str]:
    """Loss recovered when a language model measured it, else variance explained (SPEC §3)."""
    if metrics.get("loss_recovered") is not None:
        return metrics["loss_recovered"], "loss_recovered"
    return metrics.get("variance_explained"), "variance_explained"


def statuses(entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The grader's statuses, or nothing when the report was written before grading."""
    grading = entry.get("grading") or {}
    return grading.get("statuses") or {}


def status_by_metric(entry: dict[str, Any]) -> dict[str, str]:
    """Status keyed by the metric actually graded: loss_recovered's status sits on
    variance_explained when that is what the grader used ("source")."""
    return {
        info.get("source") or key: info.get("status", NOT_MEASURED)
        for key, info in statuses(entry).items()
    }


def grade_of(entry: dict[str, Any]) -> str | None:
    grading = entry.get("grading") or {}
    return grading.get("grade")


def grade_text(entry: dict[str, Any]) -> str:
    """'grade: poor (held back by dead %, L0)' or 'not graded' for pre-grading reports."""
    grade = grade_of(entry)
    if grade is None:
        return "grade: not graded"
    held = (entry.get("grading") or {}).get("held_back_by") or []
    suffix = f" (held back by {', '.join(LABELS.get(k, k) for k in held)})" if held else ""
    return f"grade: {grade}{suffix}"


def grade_status(grade: str | None) -> str | None:
    """The colour a grade is shown in: a poor SAE reads like a critical metric."""
    return {"excellent": "excellent", "good": "good", "poor": "critical"}.get(grade or "")


def sae_label(entry: dict[str, Any]) -> str:
    """Short column title: the name before ':hook' (names carry the hook after a colon)."""
    return entry["name"].split(":", 1)[0] or entry["name"]


def site_text(entry: dict[str, Any]) -> str:
    site = entry.get("site")
    if not site:
        return "site: none (cached activations)"
    return f"site: {site.get('description') or site.get('hook_name') or site.get('kind')}"


def config_text(entry: dict[str, Any]) -> str:
    config = entry.get("config") or {}
    meta = config.get("metadata") or {}
    shape = f"{config.get('d_in', '?')}→{config.get('d_sae', '?')}"
    parts = [f"{config.get('architecture', '?')} {shape}"]
    if config.get("k") is not None:
        parts.append(f"k={config['k']}")
    if meta.get("training_corpus"):
        parts.append(f"trained on {meta['training_corpus']}")
    if meta.get("training_tokens"):
        parts.append(f"{meta['training_tokens']:,} tokens")
    return "config: " + ", ".join(parts)


def prescription_text(prescription: dict[str, Any]) -> str:
    """'field: old → new (why)'; old None means the field was unset."""
    old = prescription.get("old")
    change = f"{prescription['field']}: {'unset' if old is None else old} → {prescription['new']}"
    why = prescription.get("why")
    text = f"{change} ({why})" if why else change
    measured = evidence_text(prescription)
    return f"{text} [{measured}]" if measured else text


def evidence_text(prescription: dict[str, Any]) -> str:
    """'measured: helped, dead_pct -70.6 (95 % CI -72.7 to -68.5), 3 seeds', 'unproven …', ''."""
    found = prescription.get("evidence")
    if not found:
        return ""
    if found.get("verdict") == "unproven":
        return "unproven: not measured by the prescription benchmark"
    low, high = found["interval"]
    return (f"measured: {found['verdict']}, {found['metric']} {found['delta']:+.3g} "
            f"(95 % CI {low:+.3g} to {high:+.3g}), {found['seeds']} seeds")  # fmt: skip
