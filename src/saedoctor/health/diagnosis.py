"""Run the rules: per SAE (diagnoses + merged prescriptions) and across a sweep."""

from __future__ import annotations

from collections import Counter
from typing import Any

from saedoctor.health.evidence import with_evidence
from saedoctor.health.grading import grade_entry
from saedoctor.health.policy import Policy
from saedoctor.health.rules import ENTRY_RULES, SWEEP_RULES, best_sae
from saedoctor.health.types import (
    SEVERITIES,
    Context,
    Diagnosis,
    Graded,
    Prescription,
    SweepContext,
)
from saedoctor.health.values import site_layer


def by_severity(diagnoses: list[Diagnosis]) -> list[Diagnosis]:
    """Critical first; stable, so rule order breaks ties."""
    return sorted(diagnoses, key=lambda d: SEVERITIES.index(d["severity"]))


def diagnose_entry(
    entry: dict[str, Any],
    policy: Policy,
    run: dict[str, Any] | None = None,
    grading: dict[str, Any] | None = None,
) -> list[Diagnosis]:
    """Every diagnosis that fires for one SAE entry, most severe first."""
    ctx = Context(policy, grading or grade_entry(entry, policy), run or {})
    found = [d for rule in ENTRY_RULES if (d := rule(entry, ctx)) is not None]
    return by_severity([with_evidence(d) for d in found])


def merge_prescriptions(diagnoses: list[Diagnosis]) -> list[Prescription]:
    """One prescription per field; the most severe diagnosis's value wins a conflict."""
    merged: dict[str, Prescription] = {}
    for d in by_severity(diagnoses):
        for p in d["prescriptions"]:
            merged.setdefault(p["field"], p)
    return list(merged.values())


def labels(entries: list[dict[str, Any]]) -> list[str]:
    """'layer 10' when every SAE sits at its own layer, else the SAEs' names."""
    layers = [site_layer(e) for e in entries]
    distinct = None not in layers and len(set(layers)) == len(layers)
    names = [str(e.get("name", f"SAE {i}")) for i, e in enumerate(entries)]
    if distinct:
        return [f"layer {layer}" for layer in layers]
    counts = Counter(names)
    return [n if counts[n] == 1 else f"{n} #{i}" for i, n in enumerate(names)]


def graded_sweep(entries: list[dict[str, Any]], policy: Policy) -> list[Graded]:
    return [
        Graded(entry, grade_entry(entry, policy), label)
        for entry, label in zip(entries, labels(entries), strict=True)
    ]


def diagnose_sweep(
    entries: list[dict[str, Any]], run: dict[str, Any] | None, policy: Policy
) -> dict[str, Any]:
    """The report's `sweep` block: findings across SAEs and the best one's name."""
    graded = graded_sweep(entries, policy)
    ctx = SweepContext(policy, run or {})
    found = [with_evidence(d) for rule in SWEEP_RULES if (d := rule(graded, ctx)) is not None]
    best = best_sae(graded)
    return {"diagnoses": by_severity(found), "best": best.name if best else None}
