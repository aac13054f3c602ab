"""Interval strings of the grading policy: `< x`, `<= x`, `> x`, `>= x`, `== x`, `a..b`."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_NUMBER = r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"  # "0.5", not ".5" or "5.": keeps "1...2" an error
_COMPARE = re.compile(rf"^(<=|>=|==|<|>)\s*({_NUMBER})$")
_RANGE = re.compile(rf"^({_NUMBER})\s*\.\.\s*({_NUMBER})$")


class IntervalError(ValueError):
    """An interval string that cannot be parsed or describes an empty band."""


@dataclass(frozen=True)
class Interval:
    """A closed, open or half-open interval of the real line; `text` is how the user wrote it."""

    text: str
    low: float = -math.inf
    high: float = math.inf
    low_closed: bool = True
    high_closed: bool = True

    def pair(self) -> list[float | None]:
        """[low, high] with None for an unbounded end: JSON has no infinity."""
        return [
            None if math.isinf(self.low) else self.low,
            None if math.isinf(self.high) else self.high,
        ]

    def contains(self, value: float) -> bool:
        above = value >= self.low if self.low_closed else value > self.low
        below = value <= self.high if self.high_closed else value < self.high
        return above and below


def parse_interval(text: str) -> Interval:
    """Parse one interval string; raises IntervalError saying what is wrong with it."""
    clean = text.strip()
    if match := _RANGE.match(clean):
        low, high = float(match[1]), float(match[2])
        if low > high:
            raise IntervalError(f"impossible band {text!r}: {match[1]} is above {match[2]}")
        return Interval(clean, low, high)
    if match := _COMPARE.match(clean):
        return _comparison(clean, match[1], float(match[2]))
    raise IntervalError(
        f"cannot parse interval {text!r}; expected '< x', '<= x', '> x', '>= x', '== x' or 'a..b'"
    )


def _comparison(text: str, op: str, x: float) -> Interval:
    if op == "==":
        return Interval(text, x, x)
    if op in ("<", "<="):
        return Interval(text, high=x, high_closed=op == "<=")
    return Interval(text, low=x, low_closed=op == ">=")


def span(intervals: list[Interval] | tuple[Interval, ...]) -> tuple[float, float]:
    """The lowest and highest bound of a union of intervals (±inf when unbounded or empty)."""
    lows = [i.low for i in intervals]
    highs = [i.high for i in intervals]
    return (min(lows, default=-math.inf), max(highs, default=math.inf))
