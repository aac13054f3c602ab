"""The DIAGNOSIS and PRESCRIPTION shapes of docs/report.md, and what a rule gets to see."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NotRequired, TypedDict

from saedoctor.health.policy import NOT_MEASURED, Policy

SEVERITIES: tuple[str, ...] = ("critical", "warning", "info")


class Prescription(TypedDict):
    field: str
    old: Any
    new: Any
    why: str
    evidence: NotRequired[dict[str, Any]]  # health/evidence.py: measured verdict or unproven


class Diagnosis(TypedDict):
    id: str
    title: str
    severity: str
    evidence: list[str]
    explanation: str
    prescriptions: list[Prescription]


@dataclass(frozen=True)
class Context:
    """What a per-SAE rule may read besides the entry: the policy, its grading, the run."""

    policy: Policy
    grading: dict[str, Any]
    run: dict[str, Any] = field(default_factory=dict)

    def status(self, metric: str) -> str:
        return self.grading["statuses"].get(metric, {}).get("status", NOT_MEASURED)

    def graded(self, metric: str) -> dict[str, Any]:
        return self.grading["statuses"].get(metric, {"value": None, "status": NOT_MEASURED})


Rule = Callable[[dict[str, Any], Context], Diagnosis | None]


def severity_of(status: str) -> str:
    """A diagnosis is as severe as the status that fired it; healthy statuses are info."""
    return status if status in ("critical", "warning") else "info"


def diagnosis(
    id: str,
    title: str,
    severity: str,
    evidence: list[str],
    explanation: str,
    prescriptions: list[Prescription] | None = None,
) -> Diagnosis:
    return Diagnosis(
        id=id,
        title=title,
        severity=severity,
        evidence=evidence,
        explanation=" ".join(explanation.split()),
        prescriptions=prescriptions or [],
    )


@dataclass(frozen=True)
class Graded:
    """One SAE of a sweep with its grading, as sweep rules see it."""

    entry: dict[str, Any]
    grading: dict[str, Any]
    label: str  # "layer 10" when layers tell the SAEs apart, else the SAE's name

    @property
    def name(self) -> str:
        return str(self.entry.get("name", self.label))

    def graded(self, metric: str) -> dict[str, Any]:
        return self.grading["statuses"].get(metric, {"value": None, "status": NOT_MEASURED})


@dataclass(frozen=True)
class SweepContext:
    policy: Policy
    run: dict[str, Any] = field(default_factory=dict)


SweepRule = Callable[[list[Graded], SweepContext], Diagnosis | None]
