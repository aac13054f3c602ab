"""SPEC §2's feature-density thresholds and the uncertainty settings, declared once.

Metrics, health rules, reports and the training monitor all read these; this module imports
nothing from saedoctor, so every layer of the flow may.
"""

from __future__ import annotations

ALWAYS_ON_DENSITY = 0.8  # always-on: fires on more than 80 % of tokens
DENSE_DENSITY = 0.1  # dense: more than 10 %
DEAD_DENSITY = 0.0005  # dead: fewer than 0.05 %

INTERVAL_LEVEL = 0.95  # every metric's interval
# Sequence blocks of the jackknife: enough for a t interval with 31 degrees of freedom, few
# enough that the per-block firing counts ([blocks, d_sae] int64) stay small.
INTERVAL_BLOCKS = 32
