"""Status bands of the graded metrics, as coloured regions to draw behind a value.

Read from the run's policy (`run.policy`: interval strings `< x`, `<= x`, `> x`, `>= x`,
`== x`, `a..b`, or [low, high] pairs, plus `resolution` and `fallback`, as written by
saedoctor.health); a report without one is drawn with the bundled default (SPEC §3,
docs/grading.md). Painting reproduces the grader's overlap rule so the regions agree with
the statuses, but the marker's colour always comes from the grader's status itself.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from saedoctor.report.fields import STATUSES

INF = math.inf
COUNT_METRICS = frozenset({"always_on_count"})  # integers: "> 1" means from 2 on
_NUMBER = r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
_COMPARE = re.compile(rf"^(<=|>=|==|<|>)\s*({_NUMBER})$")
_RANGE = re.compile(rf"^({_NUMBER})\s*\.\.\s*({_NUMBER})$")

# Mirrors src/saedoctor/data/policy.toml, for reports written before grading existed.
DEFAULT_TEXT: dict[str, dict[str, list[str]]] = {
    "always_on_count": {"excellent": ["== 0"], "good": ["1..2"], "warning": ["> 1"],
                        "critical": ["> 2"]},
    "diversity_top10": {"excellent": ["8..10"], "good": [">= 7"], "warning": ["< 7"],
                        "critical": ["< 5"]},
    "loss_recovered": {"excellent": [">= 0.80"], "good": [">= 0.70"], "warning": ["< 0.60"],
                       "critical": ["< 0.50"]},
    "l0": {"excellent": ["20..200"], "good": ["20..300"], "warning": ["< 10", "> 300"],
           "critical": ["< 5", "> 500"]},
    "dead_pct": {"excellent": ["<= 20"], "good": ["<= 30"], "warning": ["20..50"],
                 "critical": ["> 50"]},
    "absorption": {"excellent": ["<= 0.25"], "good": ["<= 0.30"], "warning": ["0.25..0.35"],
                   "critical": ["> 0.35"]},
}
# "worst": problem bands beat healthy ones, the worse problem wins, else the best healthy
# band; "best": the best status that holds the value. Later in the order is painted on top.
PAINT_ORDER = {
    "worst": ("good", "excellent", "warning", "critical"),
    "best": ("critical", "warning", "good", "excellent"),
}


@dataclass(frozen=True)
class BandSet:
    bands: dict[str, list[tuple[float, float]]]  # status -> intervals on the value axis
    resolution: str
    fallback: str | None  # the status of a value in no band
    origin: str  # "policy <name>" or "default"


def band_set(document: dict[str, Any], metric: str) -> BandSet:
    """The run's policy for `metric` when it is readable, else the bundled default."""
    policy = document["run"].get("policy") or {}
    raw = (policy.get("bands") or {}).get(metric) or (policy.get("intervals") or {}).get(metric)
    bands = parse_bands(raw, metric)
    if bands is None:
        default = parse_bands(DEFAULT_TEXT.get(metric), metric) or {}
        return BandSet(default, "worst", "warning", "SPEC §3 default policy")
    resolution = policy.get("resolution")
    fallback = policy.get("fallback", "warning")
    return BandSet(bands, resolution if resolution in PAINT_ORDER else "worst",
                   fallback if fallback in STATUSES else None,
                   f"policy: {policy.get('name') or 'unnamed'}")


def parse_bands(raw: Any, metric: str) -> dict[str, list[tuple[float, float]]] | None:
    """{status: [interval, ...]}; None when anything is unreadable (then defaults are drawn)."""
    if not isinstance(raw, dict):
        return None
    bands = {}
    for status in STATUSES:
        items = raw.get(status) or []
        parsed = [parse_interval(item, metric in COUNT_METRICS) for item in items]
        if any(p is None for p in parsed):
            return None
        bands[status] = [p for p in parsed if p is not None]
    return bands


def parse_interval(item: Any, count: bool) -> tuple[float, float] | None:
    """One band. Counts are widened to whole-number cells: '== 0' covers -0.5..0.5 so it
    can be seen, '> 1' starts at 1.5 (2 is the first count above 1)."""
    half = 0.5 if count else 0.0
    if isinstance(item, list) and len(item) == 2 and all(_is_bound(v) for v in item):
        lo, hi = item
        return (-INF if lo is None else lo - half, INF if hi is None else hi + half)
    if not isinstance(item, str):
        return None
    text = item.strip()
    if match := _RANGE.match(text):
        return (float(match[1]) - half, float(match[2]) + half)
    if not (match := _COMPARE.match(text)):
        return None
    op, x = match[1], float(match[2])
    return {
        "==": (x - half, x + half), "<": (-INF, x - half), "<=": (-INF, x + half),
        ">": (x + half, INF), ">=": (x - half, INF),
    }[op]


def _is_bound(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def display_range(metric: str, value: float | None) -> tuple[float, float]:
    """Axis range wide enough for every band that matters and for the value itself."""
    v = value if value is not None and math.isfinite(value) else None
    if metric == "always_on_count":
        return (-0.5, max(5.5, (v or 0) + 1.5))
    if metric == "diversity_top10":
        return (0.0, 10.0)
    if metric == "loss_recovered":
        return (min(0.0, (v if v is not None else 0.0) - 0.05), 1.0)
    if metric == "l0":  # drawn on log10(L0): 5, 20, 200, 500 all need room
        return (math.log10(0.5), math.log10(max(1000.0, (v or 0) * 1.5)))
    if metric == "dead_pct":
        return (0.0, 100.0)
    if metric == "absorption":
        return (0.0, min(1.0, max(0.5, (v or 0) + 0.05)))
    return (0.0, max(1.0, (v or 0) * 1.2))


def to_axis(metric: str, value: float) -> float:
    """L0 spans 1..1000: a log axis keeps the 5/10/20 bands visible beside 300/500."""
    if metric == "l0":
        return math.log10(value) if value > 0.5 else math.log10(0.5)
    return value


def regions(metric: str, bands: BandSet, lo: float, hi: float) -> list[tuple[str, float, float]]:
    """(status, start, end) on the axis in painting order: the fallback under everything,
    then the policy's resolution order, so what shows on top is what the grader would say."""
    out = [(bands.fallback, lo, hi)] if bands.fallback else []
    for status in PAINT_ORDER[bands.resolution]:
        for a, b in bands.bands.get(status, []):
            a_axis = lo if a == -INF else max(lo, to_axis(metric, a))
            b_axis = hi if b == INF else min(hi, to_axis(metric, b))
            if b_axis > a_axis:
                out.append((status, a_axis, b_axis))
    return out
