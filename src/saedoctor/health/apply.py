"""Fill a report document's grading, diagnoses, prescriptions and sweep, in place."""

from __future__ import annotations

from typing import Any

from saedoctor.health.diagnosis import diagnose_entry, diagnose_sweep, merge_prescriptions
from saedoctor.health.grading import grade_entry
from saedoctor.health.policy import Policy


def apply_health(document: dict[str, Any], policy: Policy) -> dict[str, Any]:
    """Grade and diagnose every SAE of a `saedoctor.report/1` document; returns it."""
    run = document.setdefault("run", {})
    entries = [e for e in document.get("saes") or [] if isinstance(e, dict)]
    for entry in entries:
        grading = grade_entry(entry, policy)
        diagnoses = diagnose_entry(entry, policy, run, grading)
        entry["grading"] = grading
        entry["diagnoses"] = diagnoses
        entry["prescriptions"] = merge_prescriptions(diagnoses)
    document["sweep"] = diagnose_sweep(entries, run, policy)
    run["policy"] = policy.describe()
    return document
