"""`saedoctor filter`: the always-on features of each SAE, keyed by the hook it reads, with their
densities, for circuit-tracing tools to drop (the guide's "Filter Always-On Features", done per
layer: docs/circuit_tracing.md).

There is deliberately no cross-layer union of ids: feature 294 of layer 22 and feature 294 of
layer 28 are different features, and an id dropped at every layer would remove features that
are fine.
"""

from __future__ import annotations

from typing import Any

from saedoctor.report.always_on import always_on_features
from saedoctor.thresholds import ALWAYS_ON_DENSITY

FILTER_SCHEMA = "saedoctor.filter/2"


def always_on_filter(document: dict[str, Any]) -> dict[str, Any]:
    """Keyed by hook name (what tracing tools hook), else SAE name; SAEs without always-on
    features are listed with [] so a consumer can tell 'checked, none' from 'not checked'."""
    run = document["run"]
    always_on: dict[str, dict[str, Any]] = {}
    for entry in document["saes"]:
        site = entry.get("site") or {}
        key = site.get("hook_name") or entry["name"]
        if key in always_on:  # two SAEs on one hook: keep both, apart
            key = entry["name"]
        always_on[key] = {
            "layer": site.get("layer"),
            "site": site.get("kind"),
            "sae": entry["name"],
            "features": [feature.as_json() for feature in always_on_features(entry)],
        }
    return {
        "schema": FILTER_SCHEMA,
        "model": model_of(document),
        "threshold": (run.get("options") or {}).get("always_on_threshold", ALWAYS_ON_DENSITY),
        "always_on": always_on,
    }


def model_of(document: dict[str, Any]) -> str | None:
    model = document["run"].get("model") or {}
    if model.get("name"):
        return model["name"]
    names = {(e.get("config") or {}).get("model_name") for e in document["saes"]} - {None}
    return names.pop() if len(names) == 1 else None
