"""Prescriptions kept inside what `saedoctor train` accepts (the limits of saedoctor.limits).

A rule computes the value its strategy calls for (double, halve, a starting weight); here the
value is moved inside the limits `train` enforces, so `saedoctor train --from-prescription`
applies every prescription instead of skipping it. A prescription the limits leave equal to
the SAE's current value is dropped (it could not change anything), and so is one the limits
would turn in the other direction.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from saedoctor.health.training import is_topk, numeric_old, prescribe, tidy
from saedoctor.health.types import Prescription
from saedoctor.health.values import as_number
from saedoctor.limits import (
    B_DEC_INITS,
    LEARNING_RATE_ABOVE,
    LEARNING_RATE_BELOW,
    MIN_DEAD_FEATURE_TOKENS,
    MIN_EXPANSION,
    MIN_PENALTY,
    MIN_TOP_K,
    MIN_TRAINING_TOKENS,
    PENALTY_FIELDS,
    dictionary_size,
    largest_useful_top_k,
)
from saedoctor.sae.arch import TRAINABLE_ARCHITECTURES

NARROW_WHY = (
    "x{old} is narrower than the model: `saedoctor train` builds dictionaries at least as wide "
    f"(expansion_factor >= {MIN_EXPANSION}), so a retrain starts there"
)


def within_limits(
    entry: dict[str, Any], found: list[Prescription], smallest_d_sae: int | None = None
) -> list[Prescription]:
    """`found` with each value clamped to what `train` accepts and no-ops dropped.

    top_k must fit the smallest dictionary the SAE may end up with: its own, the one `found`
    prescribes, and `smallest_d_sae` (what another rule may shrink it to).
    """
    limits = _Limits(entry, found, smallest_d_sae)
    kept = [c for p in found if (c := _clamped(p, limits)) is not None]
    old_expansion = numeric_old(entry, "expansion_factor")
    narrow = old_expansion is not None and old_expansion < MIN_EXPANSION
    if narrow and kept and not any(p["field"] == "expansion_factor" for p in kept):
        # Whatever the diagnosis, train refuses this width: the retrain needs this too.
        why = NARROW_WHY.format(old=tidy(old_expansion))
        kept.append(prescribe(entry, "expansion_factor", MIN_EXPANSION, why))
    return kept


class _Limits:
    """The per-SAE bounds: the dictionary a top_k must fit, and the k a dictionary must hold."""

    def __init__(
        self, entry: dict[str, Any], found: list[Prescription], smallest_d_sae: int | None
    ) -> None:
        self.d_in = _whole(as_number((entry.get("config") or {}).get("d_in")))
        prescribed = {p["field"]: p["new"] for p in found}
        expansions = (numeric_old(entry, "expansion_factor"), prescribed.get("expansion_factor"))
        sizes = [smallest_d_sae] if smallest_d_sae else []
        if self.d_in:
            widths = [max(MIN_EXPANSION, e) for x in expansions if (e := _finite(x)) is not None]
            sizes += [dictionary_size(width, self.d_in) for width in widths]
        self.top_k_ceiling = largest_useful_top_k(min(sizes)) if sizes else None
        # The k the retrained SAE will use: the prescribed one, else its own.
        k = _finite(prescribed.get("top_k"))
        own = numeric_old(entry, "top_k") if is_topk(entry) else None
        self.held_k = self.top_k(k) if k is not None else _finite(own)

    def top_k(self, value: float) -> int:
        k = max(MIN_TOP_K, round(value))
        return k if self.top_k_ceiling is None else min(k, self.top_k_ceiling)

    def expansion(self, value: float) -> float | int:
        floor = MIN_EXPANSION
        if self.held_k is not None and self.d_in:
            floor = max(floor, (self.held_k + 1) / self.d_in)  # the dictionary still holds k
        return tidy(max(floor, value))


def _clamped(p: Prescription, limits: _Limits) -> Prescription | None:
    clamp = _CLAMPS.get(p["field"])
    if clamp is None:
        return p  # text fields (dataset) and diagnose options (eval_tokens): nothing to bound
    new = clamp(p["new"], limits)
    if new is None or new == p["old"] or _reversed(p["old"], p["new"], new):
        return None
    if new == p["new"]:
        return p
    why = f"{p['why']} ({p['new']} clamped to {new}, the nearest value `saedoctor train` accepts)"
    return Prescription(field=p["field"], old=p["old"], new=new, why=why)


def _reversed(old: Any, wanted: Any, new: Any) -> bool:
    """The clamp turned a change around (k raised past the dictionary lands below the old k):
    the rule's reason no longer holds, so the prescription goes."""
    before, after, target = as_number(old), as_number(new), as_number(wanted)
    if before is None or after is None or target is None:
        return False
    return (target - before) * (after - before) <= 0


def _finite(value: Any) -> float | None:
    number = as_number(value)
    return number if number is not None and math.isfinite(number) else None


def _whole(value: float | None) -> int | None:
    return int(value) if value is not None and math.isfinite(value) and value >= 1 else None


def _expansion(value: Any, limits: _Limits) -> Any:
    number = _finite(value)
    return None if number is None else limits.expansion(number)


def _top_k(value: Any, limits: _Limits) -> Any:
    number = _finite(value)
    return None if number is None else limits.top_k(number)


def _penalty(value: Any, limits: _Limits) -> Any:
    number = _finite(value)
    return None if number is None else tidy(max(MIN_PENALTY, number))


def _tokens(value: Any, limits: _Limits) -> Any:
    number = _finite(value)
    return None if number is None else max(MIN_TRAINING_TOKENS, round(number))


def _dead_tokens(value: Any, limits: _Limits) -> Any:
    # A fraction is a density, not a token count: no clamp turns 0.1 into a sensible window.
    number = _finite(value)
    return None if number is None or number < MIN_DEAD_FEATURE_TOKENS else round(number)


def _learning_rate(value: Any, limits: _Limits) -> Any:
    number = _finite(value)
    inside = number is not None and LEARNING_RATE_ABOVE < number < LEARNING_RATE_BELOW
    return number if inside else None


def _one_of(choices: tuple[str, ...]) -> Callable[[Any, _Limits], Any]:
    return lambda value, limits: value if value in choices else None


def _layer(value: Any, limits: _Limits) -> Any:
    number = _finite(value)
    whole = number is not None and number >= 0 and float(number).is_integer()
    return int(number) if whole else None


_CLAMPS: dict[str, Callable[[Any, _Limits], Any]] = {
    "expansion_factor": _expansion,
    "top_k": _top_k,
    **{name: _penalty for name in PENALTY_FIELDS},
    "training_tokens": _tokens,
    "dead_feature_threshold": _dead_tokens,
    "learning_rate": _learning_rate,
    "architecture": _one_of(TRAINABLE_ARCHITECTURES),
    "b_dec_init": _one_of(B_DEC_INITS),
    "layer": _layer,
}
