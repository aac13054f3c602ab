"""Seed statistics and verdicts of the prescription benchmark (benchmarks/prescriptions.py).

A change is judged on its targeted metric, paired by seed against the baseline (same seed:
same initial weights, same tokens):

- `helped`: the 95 % t interval of the paired difference lies wholly on the improving side
  of 0 and no graded metric's status (the median seed's) is worse than the baseline's;
- `hurt`: the interval lies wholly on the worsening side, or a graded metric's status drops;
- `no effect`: otherwise (the interval holds 0: seed noise explains the difference).

A graded metric's status comes from the grading policy (SPEC §3: `saedoctor.health`), so
"worse by a band" means what a report would print: excellent → good → warning → critical.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

HELPED, NO_EFFECT, HURT = "helped", "no effect", "hurt"
VERDICTS = (HELPED, NO_EFFECT, HURT)
STATUS_ORDER = ("excellent", "good", "warning", "critical")
# Two-sided 95 % Student t quantiles by degrees of freedom (scipy.stats.t.ppf(0.975, df)).
T975 = {1: 12.706205, 2: 4.302653, 3: 3.182446, 4: 2.776445, 5: 2.570582, 6: 2.446912,
        7: 2.364624, 8: 2.306004, 9: 2.262157, 10: 2.228139}  # fmt: skip
Z975 = 1.96


def t_quantile(df: int) -> float:
    return T975.get(df, Z975) if df >= 1 else math.inf


def mean_interval(values: Sequence[float]) -> dict[str, Any]:
    """Mean over seeds with its 95 % t interval ([mean, mean] for identical values)."""
    xs = [float(v) for v in values]
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return {"mean": mean, "interval": [None, None], "n": len(xs)}
    half = t_quantile(len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))
    return {"mean": mean, "interval": [mean - half, mean + half], "n": len(xs)}


def paired(baseline: Sequence[float], arm: Sequence[float]) -> dict[str, Any]:
    """The paired difference arm - baseline, seed by seed, with its mean and interval."""
    if len(baseline) != len(arm):
        raise ValueError(f"paired: {len(baseline)} baseline seeds vs {len(arm)} arm seeds")
    diffs = [float(a) - float(b) for b, a in zip(baseline, arm, strict=True)]
    return {**mean_interval(diffs), "differences": diffs}


def direction_of(interval: Sequence[float | None], better: str) -> int:
    """+1 when the whole interval is on the improving side of 0, -1 on the worsening side,
    0 when it holds 0 (or is unknown)."""
    low, high = interval
    if low is None or high is None:
        return 0
    sign = 1 if better == "higher" else -1
    if low > 0:
        side = 1
    elif high < 0:
        side = -1
    else:
        return 0
    return side * sign


def status_rank(status: str | None) -> int | None:
    return STATUS_ORDER.index(status) if status in STATUS_ORDER else None


def median_status(statuses: Sequence[str]) -> str:
    """The median seed's status (for an even count, the worse of the middle two)."""
    ranks = sorted(STATUS_ORDER.index(s) for s in statuses)
    return STATUS_ORDER[ranks[len(ranks) // 2]]


def band_drops(base_status: dict[str, str], arm_status: dict[str, str]) -> list[str]:
    """Graded metrics whose (median seed's) status is worse for the arm than the baseline's."""
    drops = []
    for metric, status in arm_status.items():
        a, b = status_rank(status), status_rank(base_status.get(metric))
        if a is not None and b is not None and a > b:
            drops.append(metric)
    return drops


def verdict(interval: Sequence[float | None], better: str, worse: Sequence[str]) -> str:
    side = direction_of(interval, better)
    if side < 0 or worse:
        return HURT
    return HELPED if side > 0 else NO_EFFECT


def effect(delta: float, better: str, scale: float) -> float:
    """The improvement in units of the baseline's scale (positive: better), for ranking."""
    signed = delta if better == "higher" else -delta
    return signed / scale if scale else signed
