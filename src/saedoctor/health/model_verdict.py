"""A model's verdict from its graded SAEs, in the guide's words: "critical issue", "mild issue"
or "healthy" (its ❌ CRITICAL ISSUE / ⚠️ MILD ISSUE / ✅ HEALTHY).

The guide's advice is to use the best layer, so a model is judged by its most usable SAE:

- no SAE free of critical metrics → critical issue (nothing of this model is usable as is);
- the most usable SAE has every measured graded metric excellent → healthy;
- otherwise → mild issue (something usable, held back by warnings or "good" metrics).

"Most usable" ranks SAEs by: free of critical metrics, all measured metrics excellent, fewest
critical, fewest warning, fewest merely-good metrics, fewest always-on features, highest
reconstruction, then the order given. A metric that was not measured neither helps nor hurts;
a model with no measured graded metric at all gets NOT_ASSESSED. The reason names the
headline problem, always-on features first (the guide's most important metric), and where.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from saedoctor.health.fmt import num, pct
from saedoctor.health.policy import GRADED_METRICS, NOT_MEASURED, STATUSES

CRITICAL_ISSUE = "critical issue"
MILD_ISSUE = "mild issue"
HEALTHY_MODEL = "healthy"
NOT_ASSESSED = "not measured"
VERDICTS: tuple[str, ...] = (CRITICAL_ISSUE, MILD_ISSUE, HEALTHY_MODEL, NOT_ASSESSED)
# The status colour each verdict is drawn in, and the guide's marker for it.
VERDICT_STATUS = {CRITICAL_ISSUE: "critical", MILD_ISSUE: "warning",
                  HEALTHY_MODEL: "excellent", NOT_ASSESSED: NOT_MEASURED}
VERDICT_MARK = {CRITICAL_ISSUE: "❌", MILD_ISSUE: "⚠️", HEALTHY_MODEL: "✅", NOT_ASSESSED: "–"}

HEADLINE_METRIC = "always_on_count"  # the guide: "the #1 problem"
RECONSTRUCTION_METRIC = "loss_recovered"
METRIC_NAMES = {
    "always_on_count": "always-on features",
    "diversity_top10": "feature diversity",
    "loss_recovered": "loss recovered",
    "l0": "L0",
    "dead_pct": "dead features",
    "absorption": "absorption",
}


@dataclass(frozen=True)
class MetricGrade:
    """One graded metric of one SAE, as the grader wrote it (`grading.statuses[metric]`)."""

    status: str = NOT_MEASURED
    value: float | None = None
    source: str | None = None  # the metric actually graded (variance_explained stands in)


@dataclass(frozen=True)
class GradedSAE:
    label: str  # how the reason names it: "layer 10", or the SAE's name
    metrics: Mapping[str, MetricGrade] = field(default_factory=dict)

    @classmethod
    def from_grading(cls, label: str, grading: Mapping[str, Any] | None) -> GradedSAE:
        """From a report entry's `grading` block; None (an ungraded report) measures nothing."""
        statuses = (grading or {}).get("statuses") or {}
        return cls(label, {
            metric: MetricGrade(info.get("status", NOT_MEASURED), info.get("value"),
                                info.get("source"))
            for metric, info in statuses.items() if isinstance(info, Mapping)
        })

    def grade(self, metric: str) -> MetricGrade:
        return self.metrics.get(metric) or MetricGrade()

    def measured(self) -> list[str]:
        return [m for m in GRADED_METRICS if self.grade(m).status != NOT_MEASURED]

    def at(self, status: str) -> list[str]:
        """Graded metrics at `status`, in the guide's order of importance."""
        return [m for m in GRADED_METRICS if self.grade(m).status == status]


@dataclass(frozen=True)
class Problem:
    """One graded metric at a non-excellent status, and the SAEs where it is."""

    metric: str
    status: str
    where: tuple[str, ...]
    grades: tuple[MetricGrade, ...]  # one per place, in the same order

    @property
    def values(self) -> tuple[float | None, ...]:
        return tuple(g.value for g in self.grades)


@dataclass(frozen=True)
class ModelVerdict:
    verdict: str
    reason: str
    best: str | None  # label of the most usable SAE
    problems: tuple[Problem, ...]  # what the verdict rests on, always-on first


def usability(sae: GradedSAE, index: int) -> tuple[float, ...]:
    """Sort key: smaller is more usable (see the module docstring)."""
    critical, warning, good = (len(sae.at(s)) for s in ("critical", "warning", "good"))
    always_on = sae.grade(HEADLINE_METRIC).value
    recon = sae.grade(RECONSTRUCTION_METRIC).value
    return (critical > 0, critical + warning + good > 0, critical, warning, good,
            math.inf if always_on is None else always_on,
            math.inf if recon is None else -recon, index)


def model_verdict(saes: Sequence[GradedSAE]) -> ModelVerdict:
    """The verdict of one model from its SAEs' graded statuses (pure)."""
    assessed = [(i, s) for i, s in enumerate(saes) if s.measured()]
    if not assessed:
        return ModelVerdict(NOT_ASSESSED, "no graded metric was measured", None, ())
    best = min(assessed, key=lambda pair: usability(pair[1], pair[0]))[1]
    graded = [s for _, s in assessed]
    if best.at("critical"):
        problems = critical_problems(graded)
        verdict, lead = CRITICAL_ISSUE, "no SAE free of critical metrics: "
    elif len(best.at("excellent")) == len(best.measured()):
        problems, verdict = (), HEALTHY_MODEL
        lead = f"{best.label} is excellent on every measured metric"
    else:
        problems = best_problems(best)
        verdict, lead = MILD_ISSUE, f"best SAE {best.label} has no critical metric; held back by "
    return ModelVerdict(verdict, reason_text(verdict, lead, problems, best, graded), best.label,
                        headline_first(problems, graded))


def critical_problems(saes: Sequence[GradedSAE]) -> tuple[Problem, ...]:
    return tuple(problem(m, "critical", saes) for m in GRADED_METRICS
                 if any(s.grade(m).status == "critical" for s in saes))


def best_problems(best: GradedSAE) -> tuple[Problem, ...]:
    """The best SAE's non-excellent metrics, worst status first, then the guide's order."""
    worst_first = [s for s in reversed(STATUSES) if s != "excellent"]
    return tuple(problem(m, status, [best]) for status in worst_first for m in best.at(status))


def problem(metric: str, status: str, saes: Sequence[GradedSAE]) -> Problem:
    hits = [s for s in saes if s.grade(metric).status == status]
    return Problem(metric, status, tuple(s.label for s in hits),
                   tuple(s.grade(metric) for s in hits))


def always_on_problem(saes: Sequence[GradedSAE]) -> Problem | None:
    """Every SAE with at least one always-on feature, whatever its status."""
    hits = [s for s in saes if (s.grade(HEADLINE_METRIC).value or 0) > 0]
    if not hits:
        return None
    worst = max((s.grade(HEADLINE_METRIC).status for s in hits), key=status_rank)
    return Problem(HEADLINE_METRIC, worst, tuple(s.label for s in hits),
                   tuple(s.grade(HEADLINE_METRIC) for s in hits))


def status_rank(status: str) -> int:
    return STATUSES.index(status) if status in STATUSES else -1


def headline_first(problems: tuple[Problem, ...], saes: Sequence[GradedSAE]) -> tuple[Problem, ...]:
    """Always-on features lead the list wherever they are, even at a healthy status."""
    headline = always_on_problem(saes)
    rest = tuple(p for p in problems if p.metric != HEADLINE_METRIC)
    return ((headline,) if headline else ()) + rest


def reason_text(verdict: str, lead: str, problems: tuple[Problem, ...], best: GradedSAE,
                saes: Sequence[GradedSAE]) -> str:
    parts = []
    headline = always_on_problem(saes)
    if headline is not None:
        parts.append(always_on_text(headline, len(saes)))
    if verdict == HEALTHY_MODEL:
        missing = [METRIC_NAMES[m] for m in GRADED_METRICS if m not in best.measured()]
        measured = ", ".join(named_value(m, best.grade(m)) for m in best.measured())
        parts.append(f"{lead} ({measured})"
                     + (f"; not measured: {', '.join(missing)}" if missing else ""))
    elif verdict == CRITICAL_ISSUE:
        parts.append(lead + ", ".join(spread_text(p) for p in problems))
    else:
        parts.append(lead + ", ".join(f"{named_value(p.metric, g)} ({p.status})"
                                      for p in problems for g in p.grades))
    return "; ".join(parts)


def always_on_text(headline: Problem, n_saes: int) -> str:
    counts = [int(v or 0) for v in headline.values]
    low, high = min(counts), max(counts)
    if n_saes == 1:
        return f"{high} always-on feature{'' if high == 1 else 's'} in {headline.where[0]}"
    hit = len(headline.where)
    every = "every SAE" if hit == n_saes else f"{hit} of {n_saes} SAEs"
    each = f"{low}" if low == high else f"{low}–{high}"
    return f"always-on features in {every} ({each}{' each' if hit > 1 else ''}): " \
        + places(headline.where)


def spread_text(p: Problem) -> str:
    """'dead features 78.26% at finllama' or 'L0 612.00 at layer 4, 880.00 at layer 10'."""
    at = [f"{short_value(p.metric, g)} at {w}" for g, w in zip(p.grades, p.where, strict=True)]
    return f"{METRIC_NAMES[p.metric]} " + ", ".join(at)


def places(labels: Sequence[str]) -> str:
    """'layers 4, 10, 16' when every label is a layer, else the labels themselves."""
    prefix = "layer "
    if len(labels) > 1 and all(label.startswith(prefix) for label in labels):
        return "layers " + ", ".join(label[len(prefix):] for label in labels)
    return ", ".join(labels)


def named_value(metric: str, grade: MetricGrade) -> str:
    if metric == HEADLINE_METRIC and grade.value is not None:
        return f"{num(grade.value)} always-on feature{'' if grade.value == 1 else 's'}"
    return f"{METRIC_NAMES[metric]} {short_value(metric, grade)}"


def short_value(metric: str, grade: MetricGrade) -> str:
    value = grade.value
    if value is None:
        return NOT_MEASURED
    if metric == "loss_recovered":
        stand_in = grade.source not in (None, metric)
        return pct(value) + (f" ({str(grade.source).replace('_', ' ')})" if stand_in else "")
    if metric == "dead_pct":
        return f"{value:.2f}%"
    if metric == "always_on_count":
        return num(value)
    return f"{value:.4f}" if metric == "absorption" else f"{value:.2f}"
