"""Is B different from A? A test per metric between two report entries.

On the same tokens (same corpus, same sequence blocks, which is what two SAEs diagnosed in
one run, or two runs with the same data options, have) the test is paired: the difference
Δ = θ_B − θ_A is recomputed with each block left out, Δ₋b = θ_B,₋b − θ_A,₋b, and the
delete-one-block jackknife gives its 95 % interval, so what both SAEs share (the hard
sequences) cancels. On other tokens (two corpora) the two intervals are combined as
independent: se_Δ² = se_A² + se_B². A verdict is "B beats A" (or the reverse) only when the
interval excludes 0, and says which way is better from the metric's declared direction.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from saedoctor.metrics import jackknife
from saedoctor.metrics.registry import BY_KEY
from saedoctor.report.fields import LABELS, format_metric
from saedoctor.thresholds import INTERVAL_LEVEL

NO_DIFFERENCE = "no detectable difference"


@dataclass(frozen=True)
class Difference:
    metric: str
    a: float
    b: float
    delta: float  # b − a
    low: float | None
    high: float | None
    paired: bool
    verdict: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def compare_entries(a: dict[str, Any], b: dict[str, Any], a_name: str, b_name: str, *,
                    same_tokens: bool) -> list[Difference]:  # fmt: skip
    """A test for every metric both entries measured with an interval; paired when
    `same_tokens` (same corpus and data options) and their blocks agree."""
    ia, ib = a.get("intervals") or {}, b.get("intervals") or {}
    paired_blocks = {}
    if same_tokens:
        paired_blocks = {**_paired(ia.get("blocks"), ib.get("blocks")),
                         **_paired(ia.get("downstream_blocks"), ib.get("downstream_blocks"))}
    out = []
    for key in BY_KEY:
        va, vb = a["metrics"].get(key), b["metrics"].get(key)
        ra, rb = (ia.get("metrics") or {}).get(key), (ib.get("metrics") or {}).get(key)
        if not _number(va) or not _number(vb) or ra is None or rb is None:
            continue
        bounds = (paired_blocks[key] if key in paired_blocks
                  else jackknife.independent_difference(va, ra, vb, rb))  # fmt: skip
        out.append(_difference(key, va, vb, bounds, key in paired_blocks, a_name, b_name))
    return out


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _paired(a: dict[str, Any] | None,
            b: dict[str, Any] | None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Jackknife intervals of B − A for every metric both have left-out values of, when the
    two were measured on the same blocks (equal token counts per block)."""
    if not a or not b or a.get("tokens") != b.get("tokens"):
        return {}
    out = {}
    for key, left_a in (a.get("left_out") or {}).items():
        left_b = (b.get("left_out") or {}).get(key)
        if left_b is None or len(left_b) != len(left_a):
            continue
        used = [x is not None and y is not None for x, y in zip(left_a, left_b, strict=True)]
        diff = torch.tensor([(y - x) if ok else math.nan
                             for x, y, ok in zip(left_a, left_b, used, strict=True)],
                            dtype=torch.float64)  # fmt: skip
        out[key] = torch.tensor(used), diff
    return out


def _difference(key: str, va: float, vb: float, bounds: Any, paired: bool, a_name: str,
                b_name: str) -> Difference:  # fmt: skip
    delta = vb - va
    if paired:
        used, diff = bounds
        bounds = jackknife.interval(delta, diff, used) or [None, None]
    low, high = bounds
    return Difference(key, va, vb, delta, low, high, paired,
                      verdict(key, delta, low, high, a_name, b_name))  # fmt: skip


def short_verdict(difference: dict[str, Any]) -> str:
    """'B better', 'A better', 'B higher' / 'B lower' (no better direction), or 'no detectable
    difference', for a table cell."""
    low, high, delta = difference["low"], difference["high"], difference["delta"]
    if low is None or high is None:
        return "not tested"
    if low <= 0 <= high:
        return NO_DIFFERENCE
    better = BY_KEY[difference["metric"]].better
    if better is None:
        return "B higher" if delta > 0 else "B lower"
    return "B better" if (delta > 0) == (better == "higher") else "A better"


def verdict(key: str, delta: float, low: float | None, high: float | None, a_name: str,
            b_name: str) -> str:  # fmt: skip
    """'B beats A on loss recovered (Δ = 0.031, 95 % CI 0.024–0.038)', 'B is higher …' for a
    metric with no better direction, or 'no detectable difference'."""
    label = LABELS.get(key, key)
    if low is None or high is None:
        return f"{label}: not tested (fewer than two sequence blocks)"
    if low <= 0 <= high:
        return f"{label}: {NO_DIFFERENCE} (Δ = {format_metric(key, delta)}, " \
            f"{INTERVAL_LEVEL:.0%} CI {format_metric(key, low)} to {format_metric(key, high)})"
    better = BY_KEY[key].better
    ci = (f"(Δ = {format_metric(key, delta)}, {INTERVAL_LEVEL:.0%} CI "
          f"{format_metric(key, low)} to {format_metric(key, high)})")
    if better is None:
        way = "higher" if delta > 0 else "lower"
        return f"{b_name} is {way} than {a_name} on {label} {ci}"
    b_wins = (delta > 0) == (better == "higher")
    winner, loser = (b_name, a_name) if b_wins else (a_name, b_name)
    return f"{winner} beats {loser} on {label} {ci}"
