"""Reading metric values from a report entry: absent, None, NaN or declared not measured = None."""

from __future__ import annotations

import math
from typing import Any


def metric_value(entry: dict[str, Any], key: str) -> float | None:
    """The measured value of `key`, or None when it was not measured (never a stand-in zero)."""
    not_measured = entry.get("not_measured") or {}
    if key in not_measured:
        return None
    value = (entry.get("metrics") or {}).get(key)
    return as_number(value)


def as_number(value: Any) -> float | None:
    # bool is an int subclass; a True here would be a bug upstream, not a count of 1.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if math.isnan(value):
        return None
    return value  # ints stay ints: a count of 2 reads "2" in the report, not "2.0"


def site_layer(entry: dict[str, Any]) -> int | None:
    layer = (entry.get("site") or {}).get("layer")
    return layer if isinstance(layer, int) and not isinstance(layer, bool) else None
