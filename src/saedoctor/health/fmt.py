"""Number formatting for evidence strings: every sentence quotes the measured numbers."""

from __future__ import annotations

from typing import Any


def pct(fraction: float, digits: int = 2) -> str:
    """A fraction in [0, 1] as a percentage."""
    return f"{fraction * 100:.{digits}f}%"


def num(x: Any, digits: int = 4) -> str:
    """Integers with thousands separators, floats to `digits` significant figures."""
    if isinstance(x, int) and not isinstance(x, bool):
        return f"{x:,}"
    if isinstance(x, float):
        if x.is_integer() and abs(x) < 1e15:
            return f"{int(x):,}"
        return f"{x:.{digits}g}"
    return str(x)


def ids(features: list[Any], limit: int = 8) -> str:
    shown = ", ".join(str(f) for f in features[:limit])
    more = len(features) - limit
    return f"{shown} and {more} more" if more > 0 else shown


def plural(n: int | float, word: str) -> str:
    return f"{num(n)} {word}" + ("" if n == 1 else "s")


def graded_recon(graded: dict[str, Any]) -> str:
    """'loss recovered 66.24%' or 'variance explained 78.06% (no loss recovered measured)'."""
    value, source = graded["value"], graded.get("source", "loss_recovered")
    if source == "loss_recovered":
        return f"loss recovered {pct(value)}"
    return f"{source.replace('_', ' ')} {pct(value)} (graded in place of loss recovered)"
