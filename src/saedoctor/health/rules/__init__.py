"""Diagnosis rules: each reads one SAE entry (or a sweep) and returns a DIAGNOSIS or None.

A rule fires only on measured evidence: a metric that was not measured is never a problem.
"""

from __future__ import annotations

from saedoctor.health.rules.absorption import high_absorption
from saedoctor.health.rules.always_on import always_on
from saedoctor.health.rules.best import best_layer, best_sae
from saedoctor.health.rules.dead import dead_features
from saedoctor.health.rules.l0 import l0_out_of_range
from saedoctor.health.rules.late_layers import late_layer_reconstruction
from saedoctor.health.rules.mismatch import data_mismatch
from saedoctor.health.rules.preflight_norm import preflight_norm
from saedoctor.health.rules.preflight_outliers import preflight_outliers
from saedoctor.health.rules.preflight_site import preflight_site
from saedoctor.health.rules.preflight_special import preflight_special
from saedoctor.health.rules.reconstruction import poor_reconstruction
from saedoctor.health.types import Rule, SweepRule

# Report order within one severity: the guide's order of importance.
ENTRY_RULES: tuple[Rule, ...] = (
    # pre-flight first: a miswired SAE makes every later finding moot
    preflight_site,
    preflight_norm,
    preflight_special,
    always_on,
    poor_reconstruction,
    l0_out_of_range,
    dead_features,
    high_absorption,
    data_mismatch,
    preflight_outliers,
)
SWEEP_RULES: tuple[SweepRule, ...] = (late_layer_reconstruction, best_layer)

__all__ = ["ENTRY_RULES", "SWEEP_RULES", "best_sae"]
