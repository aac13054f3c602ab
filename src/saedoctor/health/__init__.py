"""Grading, diagnosis and prescription (SPEC §3, §4): from measured metrics to training changes.

policy = load_policy()            # the guide's thresholds; load_policy("my.toml") overrides
apply_health(document, policy)    # fills grading/diagnoses/prescriptions/sweep in place
"""

from __future__ import annotations

from saedoctor.health.apply import apply_health
from saedoctor.health.diagnosis import diagnose_entry, diagnose_sweep, merge_prescriptions
from saedoctor.health.grading import grade_entry
from saedoctor.health.policy import Policy, load_policy

__all__ = [
    "Policy",
    "apply_health",
    "diagnose_entry",
    "diagnose_sweep",
    "grade_entry",
    "load_policy",
    "merge_prescriptions",
]
