"""Prescriptions several rules share, and the guards that keep them from contradicting.

Two rules can pull one knob in opposite directions (poor reconstruction wants more latents,
dead features and absorption want fewer). Each rule checks the other's status first: when
both problems are present neither touches expansion_factor, and the SAE is told to change
what does not conflict (tokens, AuxK, k, penalties).
"""

from __future__ import annotations

from typing import Any

from saedoctor.health.policy import PROBLEMS
from saedoctor.health.training import numeric_old, prescribe, tidy
from saedoctor.health.types import Context, Prescription
from saedoctor.health.values import as_number
from saedoctor.limits import MIN_EXPANSION, dictionary_size


def may_shrink_dictionary(ctx: Context) -> bool:
    """Fewer latents only when reconstruction is not already a problem."""
    return ctx.status("loss_recovered") not in PROBLEMS


def may_grow_dictionary(ctx: Context) -> bool:
    """More latents only when the ones there are neither dead nor redundant."""
    return ctx.status("dead_pct") not in PROBLEMS and ctx.status("absorption") not in PROBLEMS


def halve_expansion(entry: dict[str, Any], why: str) -> list[Prescription]:
    old = numeric_old(entry, "expansion_factor")
    if old is None or old <= MIN_EXPANSION:
        return []  # nothing narrower is trainable
    return [prescribe(entry, "expansion_factor", _halved(old), why)]


def _halved(expansion: float) -> float | int:
    return tidy(max(MIN_EXPANSION, expansion / 2))


def smallest_d_sae(entry: dict[str, Any], ctx: Context) -> int | None:
    """The dictionary a shrinking rule may leave this SAE: a top_k prescribed by another rule
    must fit it once the prescriptions are merged. None: no rule shrinks it (or unknown)."""
    old = numeric_old(entry, "expansion_factor")
    d_in = as_number((entry.get("config") or {}).get("d_in"))
    if not may_shrink_dictionary(ctx) or old is None or not d_in or d_in < 1:
        return None
    return dictionary_size(_halved(old), int(d_in))


def double_expansion(entry: dict[str, Any], why: str) -> list[Prescription]:
    old = numeric_old(entry, "expansion_factor")
    return [] if old is None else [prescribe(entry, "expansion_factor", tidy(old * 2), why)]


def scaled_penalties(entry: dict[str, Any], factor: float, why: str) -> list[Prescription]:
    """l1_penalty / sparsity_penalty × factor, for each the trainer config names."""
    found = []
    for field in ("l1_penalty", "sparsity_penalty"):
        old = numeric_old(entry, field)
        if old is not None and old > 0:
            found.append(prescribe(entry, field, tidy(old * factor), why))
    return found
