"""What the prescription benchmark measured of each rule's training changes, attached to every
prescription the rules issue, so a report says which advice was shown to help.

`data/prescription_evidence.json` is distilled from `benchmarks/results/prescriptions.json`
(`benchmarks/prescription_evidence.py`; a test keeps the two equal): per diagnosis id and
prescription field, the verdict ("helped", "no effect", "hurt"), the targeted metric, the
paired difference over seeds with its 95 % interval, and the change's rank among the rule's.
A prescription the benchmark did not measure is marked "unproven". Fields named `eval_…` are
diagnose options, not training changes, and carry no evidence.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from saedoctor.health.types import Diagnosis, Prescription

EVIDENCE_FILE = Path(__file__).resolve().parent.parent / "data" / "prescription_evidence.json"
HELPED, UNPROVEN = "helped", "unproven"
VERDICTS = (HELPED, "no effect", "hurt")
NOT_TRAINING_PREFIX = "eval_"  # diagnose options (health/rules/preflight_*.py, dead.py)


@dataclass(frozen=True)
class Measured:
    verdict: str
    metric: str
    delta: float
    interval: tuple[float, float]
    seeds: int
    rank: int

    def as_json(self, source: str) -> dict[str, Any]:
        return {"verdict": self.verdict, "metric": self.metric, "delta": self.delta,
                "interval": list(self.interval), "seeds": self.seeds, "source": source}  # fmt: skip


@dataclass(frozen=True)
class Evidence:
    source: str  # the result file the verdicts come from
    verdicts: dict[str, dict[str, Measured]]  # diagnosis id -> field -> what was measured

    def of(self, rule: str, field: str) -> Measured | None:
        return self.verdicts.get(rule, {}).get(field)


@cache
def load_evidence(path: Path = EVIDENCE_FILE) -> Evidence:
    raw = json.loads(path.read_text()) if path.is_file() else {}
    verdicts = {
        rule: {field: read_measured(m) for field, m in fields.items()}
        for rule, fields in (raw.get("verdicts") or {}).items()
    }
    return Evidence(str(raw.get("source", "")), verdicts)


def read_measured(raw: dict[str, Any]) -> Measured:
    low, high = raw["interval"]
    return Measured(str(raw["verdict"]), str(raw["metric"]), float(raw["delta"]),
                    (float(low), float(high)), int(raw["seeds"]), int(raw["rank"]))  # fmt: skip


def with_evidence(diagnosis: Diagnosis, evidence: Evidence | None = None) -> Diagnosis:
    """The diagnosis with each training prescription's evidence, measured helpers first (by
    their measured rank), then unproven ones, then any measured not to help."""
    evidence = evidence or load_evidence()
    rule = diagnosis["id"]
    marked = [marked_prescription(p, evidence.of(rule, p["field"]), evidence.source, rule)
              for p in diagnosis["prescriptions"]]  # fmt: skip
    marked.sort(key=lambda p: order_key(p, evidence.of(rule, p["field"])))
    return {**diagnosis, "prescriptions": marked}


def marked_prescription(p: Prescription, measured: Measured | None, source: str,
                        rule: str) -> Prescription:  # fmt: skip
    if p["field"].startswith(NOT_TRAINING_PREFIX):
        return p
    if measured is None:
        return {**p, "evidence": {"verdict": UNPROVEN}}
    return {**p, "evidence": measured.as_json(f"{source} verdicts.{rule}.{p['field']}")}


def order_key(p: Prescription, measured: Measured | None) -> tuple[int, int]:
    if p["field"].startswith(NOT_TRAINING_PREFIX):
        return (1, 0)  # beside unproven ones: advice of another kind, in the rule's order
    if measured is None:
        return (1, 0)
    return (0, measured.rank) if measured.verdict == HELPED else (2, measured.rank)

