"""Sweep rule (h): the best SAE (layer) of a sweep, with the reasons it won.

Order: best grade, then fewest always-on features (the guide's most important metric),
then highest loss recovered / variance explained, then fewest dead features. A metric not
measured sorts last on its key, never first.
"""

from __future__ import annotations

import math

from saedoctor.health.fmt import pct
from saedoctor.health.policy import NOT_MEASURED
from saedoctor.health.types import Diagnosis, Graded, SweepContext, diagnosis

GRADE_ORDER = {"excellent": 0, "good": 1, "poor": 2, NOT_MEASURED: 3}
KEYS: tuple[str, ...] = ("grade", "always-on features", "reconstruction", "dead features")


def rank_key(g: Graded) -> tuple[float, ...]:
    def value(metric: str) -> float | None:
        return g.graded(metric)["value"]

    always_on, recon, dead = value("always_on_count"), value("loss_recovered"), value("dead_pct")
    return (
        GRADE_ORDER.get(g.grading.get("grade", NOT_MEASURED), 3),
        math.inf if always_on is None else always_on,
        math.inf if recon is None else -recon,
        math.inf if dead is None else dead,
    )


def ranked(graded: list[Graded]) -> list[Graded]:
    """Best first; Python's sort is stable, so ties keep report order."""
    return sorted(graded, key=rank_key)


def best_sae(graded: list[Graded]) -> Graded | None:
    """Only a comparison has a best: one SAE, or none graded, gives None."""
    measured = [g for g in graded if g.grading.get("grade") != NOT_MEASURED]
    return ranked(measured)[0] if len(graded) >= 2 and measured else None


def best_layer(graded: list[Graded], ctx: SweepContext) -> Diagnosis | None:
    best = best_sae(graded)
    if best is None:
        return None
    order = ranked(graded)
    runner_up = next(g for g in order if g is not best)
    return diagnosis(
        "best_layer",
        f"best: {best.label}",
        "info",
        [_decided(best, runner_up)] + [_summary(g, g is best) for g in order],
        "Ranked by grade, then fewest always-on features (the guide's most important "
        "metric), then highest reconstruction, then fewest dead features. Use the best one "
        "for circuit tracing, and filter its always-on features.",
    )


def _decided(best: Graded, other: Graded) -> str:
    for name, a, b in zip(KEYS, rank_key(best), rank_key(other), strict=True):
        if a != b:
            shown = f"{_show(best, name)} vs {_show(other, name)}"
            return f"{best.label} beats {other.label} on {name}: {shown}"
    return f"{best.label} ties {other.label} on every key; the first in the report wins"


def _show(g: Graded, key: str) -> str:
    if key == "grade":
        return str(g.grading.get("grade"))
    metric = {
        "always-on features": "always_on_count",
        "reconstruction": "loss_recovered",
        "dead features": "dead_pct",
    }[key]
    value = g.graded(metric)["value"]
    if value is None:
        return NOT_MEASURED
    if metric == "loss_recovered":
        return f"{g.graded(metric)['source'].replace('_', ' ')} {pct(value)}"
    return f"{value:.2f}%" if metric == "dead_pct" else f"{int(value)}"


def _summary(g: Graded, is_best: bool) -> str:
    parts = [_show(g, key) for key in KEYS[1:]]
    tag = " (best)" if is_best else ""
    return (
        f"{g.label}{tag}: grade {_show(g, 'grade')}, {parts[0]} always-on, {parts[1]}, "
        f"{parts[2]} dead"
    )
