"""Grading (SPEC §3): a status per metric from the policy's bands, then one grade per SAE."""

from __future__ import annotations

from typing import Any

from saedoctor.health.policy import (
    HEALTHY,
    NOT_MEASURED,
    PROBLEMS,
    STATUSES,
    MetricPolicy,
    Policy,
)
from saedoctor.health.values import metric_value


def status_of(value: float, mp: MetricPolicy, policy: Policy) -> str:
    """The status of one value; overlapping bands are settled by the policy's resolution."""
    held = [s for s in STATUSES if any(i.contains(value) for i in mp.bands[s])]
    if not held:
        return policy.fallback
    if policy.resolution == "best":
        return held[0]
    problems = [s for s in held if s in PROBLEMS]
    # "worst": any problem band beats a healthy one; healthy bands are floors ("good or
    # better"), so among them the best one that holds the value is the status.
    return problems[-1] if problems else held[0]


def metric_status(entry: dict[str, Any], mp: MetricPolicy, policy: Policy) -> dict[str, Any]:
    """{"value", "status", "source"}: `source` names the metric actually graded."""
    source = mp.metric
    value = metric_value(entry, source)
    if value is None and mp.fallback_source:
        fallback_value = metric_value(entry, mp.fallback_source)
        if fallback_value is not None:
            source, value = mp.fallback_source, fallback_value
    if value is None:
        return {"value": None, "status": NOT_MEASURED, "source": source}
    status = status_of(value, mp, policy)
    graded = {"value": value, "status": status, "source": source}
    return graded | interval_reach(entry, source, status, mp, policy)


def interval_reach(entry: dict[str, Any], source: str, status: str, mp: MetricPolicy,
                   policy: Policy) -> dict[str, Any]:  # fmt: skip
    """{"interval": [low, high], "reaches": [other statuses its ends fall in]} when the
    metric has an interval: "good, interval reaches warning" is a verdict to hold loosely."""
    interval = ((entry.get("intervals") or {}).get("metrics") or {}).get(source)
    if not interval:
        return {}
    ends = {status_of(v, mp, policy) for v in interval}
    return {"interval": interval, "reaches": [s for s in STATUSES if s in ends and s != status]}


def overall_grade(statuses: dict[str, str]) -> tuple[str, list[str]]:
    """The grade over measured metrics and the metrics that held it below the next step."""
    measured = {m: s for m, s in statuses.items() if s != NOT_MEASURED}
    if not measured:
        return NOT_MEASURED, []
    if all(s == "excellent" for s in measured.values()):
        return "excellent", []
    if all(s in HEALTHY for s in measured.values()):
        return "good", [m for m, s in measured.items() if s != "excellent"]
    # Worst first, so a reader sees the critical metrics before the warnings.
    held = [m for m, s in measured.items() if s in PROBLEMS]
    held.sort(key=lambda m: -STATUSES.index(measured[m]))
    return "poor", held


def grade_entry(entry: dict[str, Any], policy: Policy) -> dict[str, Any]:
    """The report's `grading` block for one SAE entry (docs/report.md)."""
    statuses = {m: metric_status(entry, mp, policy) for m, mp in policy.metrics.items()}
    grade, held_back_by = overall_grade({m: s["status"] for m, s in statuses.items()})
    return {
        "statuses": statuses,
        "grade": grade,
        "held_back_by": held_back_by,
        "not_measured_metrics": [m for m, s in statuses.items() if s["status"] == NOT_MEASURED],
    }
