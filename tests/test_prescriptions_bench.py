"""The prescription benchmark (benchmarks/prescriptions.py): verdict arithmetic, and a --quick
run whose every verdict is recomputed from the per-seed values it stored."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from scipy import stats

from saedoctor.health.grading import status_of
from saedoctor.health.policy import GRADED_METRICS, load_policy

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import _verdicts as V  # noqa: E402

ORDER = ("excellent", "good", "warning", "critical")


def test_t_table_matches_scipy():
    for df, q in V.T975.items():
        assert q == pytest.approx(stats.t.ppf(0.975, df), abs=1e-6)


def test_verdict_rules():
    # always-on 16 -> 0 on every seed: a zero-width interval below 0, lower is better
    diff = V.paired([16, 16, 16], [0, 0, 0])
    assert diff["interval"] == [-16, -16]
    assert V.verdict(diff["interval"], "lower", []) == V.HELPED
    assert V.verdict(diff["interval"], "lower", ["loss_recovered"]) == V.HURT
    assert V.verdict(diff["interval"], "higher", []) == V.HURT
    noisy = V.paired([0.5, 0.6, 0.7], [0.52, 0.55, 0.75])
    assert V.verdict(noisy["interval"], "higher", []) == V.NO_EFFECT
    assert V.verdict([0.0, 0.0], "higher", []) == V.NO_EFFECT
    assert V.band_drops({"l0": "excellent"}, {"l0": "warning"}) == ["l0"]
    assert V.band_drops({"l0": "warning"}, {"l0": "excellent", "x": "critical"}) == []
    assert V.median_status(["excellent", "warning", "good"]) == "good"
    assert V.median_status(["excellent", "warning"]) == "warning"


def _values(arms: dict, arm_id: str, corpus: str, metric: str, seeds: list[int]) -> list:
    rows = arms[arm_id]["eval"][corpus]
    return [rows[str(s)]["metrics"].get(metric) for s in seeds]


def _statuses(arms: dict, arm_id: str, corpus: str, seeds: list[int]) -> dict[str, str]:
    """Each graded metric's median seed's status, recomputed from the arms table."""
    policy = load_policy()
    out = {}
    for metric in GRADED_METRICS:
        mp = policy.metrics[metric]
        vals = _values(arms, arm_id, corpus, metric, seeds)
        if any(v is None for v in vals) and mp.fallback_source:
            vals = _values(arms, arm_id, corpus, mp.fallback_source, seeds)
        if all(v is not None for v in vals):
            ranks = sorted(ORDER.index(status_of(v, mp, policy)) for v in vals)
            out[metric] = ORDER[ranks[len(ranks) // 2]]
    return out


def _expected(v: dict[str, Any], arms: dict, seeds: list[int]) -> str:
    corpus, metric = v["corpus"], v["metric"]
    base = _values(arms, v["baseline_arm"], corpus, metric, seeds)
    arm = _values(arms, v["arm_id"], corpus, metric, seeds)
    assert base == v["baseline"]["values"] and arm == v["arm"]["values"]
    diffs = [a - b for b, a in zip(base, arm, strict=True)]
    mean = statistics.fmean(diffs)
    half = stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    assert v["delta"] == pytest.approx(mean, abs=1e-12)
    assert v["interval"] == pytest.approx([mean - half, mean + half], rel=1e-5, abs=1e-9)
    sb = _statuses(arms, v["baseline_arm"], corpus, seeds)
    sa = _statuses(arms, v["arm_id"], corpus, seeds)
    worse = [m for m in sa if m in sb and ORDER.index(sa[m]) > ORDER.index(sb[m])]
    assert sorted(worse) == sorted(v["worse"])
    sign = 1 if v["better"] == "higher" else -1
    low, high = (mean - half) * sign, (mean + half) * sign
    if sign < 0:
        low, high = high, low
    if high < 0 or worse:
        return "hurt"
    return "helped" if low > 0 else "no effect"


@pytest.mark.slow
def test_quick_run_verdicts_follow_from_their_numbers(tmp_path):
    cmd = [sys.executable, str(BENCH / "prescriptions.py"), "--quick", "--out", str(tmp_path)]
    subprocess.run(cmd, check=True, timeout=1800)
    result = json.loads((tmp_path / "prescriptions.json").read_text())
    assert result["quick"] is True and (tmp_path / "prescriptions.md").is_file()
    seeds, arms = result["seeds"], result["arms"]
    assert len(seeds) >= 3
    for key in ("verdicts", "arms", "cases", "guide", "mismatch_story", "not_fired"):
        assert key in result
    judged = [v for block in result["verdicts"].values() for v in block.values()]
    judged += list(result["guide"]["recommendations"].values())
    judged += list(result["guide"]["domain"].values())
    assert judged
    for rule in result["verdicts"]:
        assert rule in result["targets"]
    for v in judged:
        if v["verdict"] == "not measured":
            continue
        assert v["seeds"] == len(seeds)
        assert v["verdict"] == _expected(v, arms, seeds)
    for block in result["verdicts"].values():
        ranks = sorted(v["rank"] for v in block.values())
        assert ranks == list(range(1, len(block) + 1))
    refused = result["guide"]["expansion_below_one"]["refused"]
    assert refused["exit_code"] == 2 and "expansion_factor=0.25" in refused["error"]
