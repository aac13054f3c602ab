"""Prescriptions carry what the prescription benchmark measured of them, and the rules follow
that evidence.

The first tests use an Evidence built here: its verdicts and numbers are INVENTED to check the
marking and ordering. The last tests read the committed result file
(benchmarks/results/prescriptions.json) and the evidence saedoctor ships from it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from saedoctor.health.evidence import (
    EVIDENCE_FILE,
    Evidence,
    Measured,
    load_evidence,
    with_evidence,
)
from saedoctor.report.fields import prescription_text

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "prescriptions.json"


def invented_evidence() -> Evidence:
    return Evidence("invented.json", {"dead_features": {
        "auxk_alpha": Measured("no effect", "dead_pct", -0.4, (-2.0, 1.2), 3, 3),
        "b_dec_init": Measured("helped", "dead_pct", -60.0, (-65.0, -55.0), 3, 1),
        "top_k": Measured("helped", "dead_pct", -10.0, (-14.0, -6.0), 3, 2),
    }})  # fmt: skip


def rx(field: str) -> dict:
    return {"field": field, "old": 1, "new": 2, "why": "because"}


def test_prescriptions_are_marked_and_ordered_by_measured_effect() -> None:
    diagnosis = {"id": "dead_features", "title": "t", "severity": "warning", "evidence": [],
                 "explanation": "", "prescriptions": [rx("auxk_alpha"), rx("eval_tokens"),
                                                      rx("top_k"), rx("l1_penalty"),
                                                      rx("b_dec_init")]}  # fmt: skip
    marked = with_evidence(diagnosis, invented_evidence())["prescriptions"]
    assert [p["field"] for p in marked] == ["b_dec_init", "top_k", "eval_tokens", "l1_penalty",
                                           "auxk_alpha"]  # fmt: skip
    by_field = {p["field"]: p for p in marked}
    assert by_field["b_dec_init"]["evidence"] == {
        "verdict": "helped", "metric": "dead_pct", "delta": -60.0, "interval": [-65.0, -55.0],
        "seeds": 3, "source": "invented.json verdicts.dead_features.b_dec_init"}  # fmt: skip
    assert by_field["l1_penalty"]["evidence"] == {"verdict": "unproven"}
    assert "evidence" not in by_field["eval_tokens"]  # a diagnose option, not training
    assert by_field["auxk_alpha"]["evidence"]["verdict"] == "no effect"
    assert prescription_text(by_field["top_k"]) == (
        "top_k: 1 → 2 (because) [measured: helped, dead_pct -10 (95 % CI -14 to -6), 3 seeds]")
    assert prescription_text(by_field["l1_penalty"]).endswith(
        "[unproven: not measured by the prescription benchmark]")
    # another rule's evidence is not this rule's
    other = with_evidence({**diagnosis, "id": "high_absorption"}, invented_evidence())
    assert all(p.get("evidence", {"verdict": "unproven"})["verdict"] == "unproven"
               for p in other["prescriptions"])  # fmt: skip


def committed_result() -> dict:
    if not RESULTS.is_file():
        pytest.fail(f"{RESULTS} is missing: run benchmarks/prescriptions.py")
    return json.loads(RESULTS.read_text())


def test_shipped_evidence_is_the_distillation_of_the_committed_result() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from prescription_evidence import distil

    assert json.loads(EVIDENCE_FILE.read_text()) == distil(committed_result())
    assert load_evidence().verdicts  # the package reads it


def baseline_entries(result: dict) -> list[tuple[str, dict]]:
    """Each case's judged baseline, seed by seed, as a report entry rebuilt from what the result
    stored of it: its training config and its measured metrics on the held-out tokens."""
    entries = []
    for name, case in result["cases"].items():
        layer = max(case["layers"])
        config = {**case["baseline_config"], "dataset": case["dataset"]}
        arm = next(a for a in result["arms"].values()
                   if a["config"].get("layer") == layer
                   and all(a["config"].get(k) == v for k, v in config.items()))  # fmt: skip
        trainer = {**arm["config"]}
        for seed, measured in sorted(next(iter(arm["eval"].values())).items()):
            entries.append((f"{name} seed {seed}", {
                "name": name, "metrics": measured["metrics"],
                "site": {"layer": layer, "kind": "resid_post"},
                "config": {"architecture": trainer["architecture"], "k": trainer["top_k"],
                           "d_in": 576, "d_sae": int(576 * trainer["expansion_factor"]),
                           "metadata": {"trainer": trainer,
                                        "training_tokens": trainer["training_tokens"],
                                        "training_corpus": case["dataset"]}},
            }))  # fmt: skip
    return entries


def test_no_rule_prescribes_a_change_measured_not_to_help() -> None:
    """Every baseline the benchmark diagnosed, diagnosed again by today's rules: no training
    prescription may be one whose shipped verdict for that rule is 'no effect' or 'hurt'."""
    from saedoctor.health import load_policy
    from saedoctor.health.diagnosis import diagnose_entry

    evidence = load_evidence().verdicts
    policy = load_policy(None)
    checked = 0
    for label, entry in baseline_entries(committed_result()):
        for d in diagnose_entry(entry, policy, {"corpus": "python-docs@test"}):
            for p in d["prescriptions"]:
                measured = evidence.get(d["id"], {}).get(p["field"])
                checked += 1
                if measured is not None:
                    assert measured.verdict == "helped", (label, d["id"], p["field"], measured)
    assert checked > 0
