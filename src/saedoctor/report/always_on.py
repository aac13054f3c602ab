"""An SAE entry's always-on features with their densities, as `filter` and `compare` list them.

A feature id means nothing without its SAE (layer, site): feature 294 of layer 22 and feature 294
of layer 28 are two different features. So this reads one entry at a time and never merges ids
across entries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AlwaysOnFeature:
    id: int
    density: float | None  # fraction of counted tokens; None when the report does not give it
    density_range: tuple[float, float] | None = None  # a spread the source reports, if any
    # its dense-latent class (health/taxonomy.py), when the report classified it: a
    # position or null-space latent is a real direction, kept out of circuit graphs
    latent_class: tuple[str | None] | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "density": self.density}
        if self.density_range is not None:
            out["density_range"] = list(self.density_range)
        if self.latent_class is not None:
            out["class"] = self.latent_class[0]
        return out


def always_on_features(entry: dict[str, Any]) -> list[AlwaysOnFeature]:
    """Ascending id. The density is the entry's measured `feature_density[id]`, else the
    explanation's; `density_range` only when an explanation gives one; the class only when
    the entry's `dense_latents` classified the feature (None there: no class fits)."""
    ids = sorted(int(i) for i in (entry.get("metrics") or {}).get("always_on_features") or [])
    explained = {e["feature"]: e for e in entry.get("always_on_explanations") or []
                 if isinstance(e, dict) and isinstance(e.get("feature"), int)}
    vector = entry.get("feature_density") or []
    classes = {d["feature"]: (d.get("class"),) for d in entry.get("dense_latents") or []
               if isinstance(d, dict) and isinstance(d.get("feature"), int)}  # fmt: skip
    out = []
    for feature in ids:
        explanation = explained.get(feature) or {}
        density = vector[feature] if feature < len(vector) else explanation.get("density")
        out.append(AlwaysOnFeature(feature, finite(density), span(explanation),
                                   classes.get(feature)))  # fmt: skip
    return out


def finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def span(explanation: dict[str, Any]) -> tuple[float, float] | None:
    pair = explanation.get("density_range")
    if not isinstance(pair, list) or len(pair) != 2:
        return None
    low, high = finite(pair[0]), finite(pair[1])
    return None if low is None or high is None else (low, high)
