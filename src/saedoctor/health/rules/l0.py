"""Rule (c): L0 far too high or too low, and the sparsity knob that moves it."""

from __future__ import annotations

from typing import Any

from saedoctor.health.clamp import within_limits
from saedoctor.health.fmt import num
from saedoctor.health.intervals import span
from saedoctor.health.policy import PROBLEMS
from saedoctor.health.rules.common import scaled_penalties, smallest_d_sae
from saedoctor.health.training import is_topk, numeric_old, prescribe, tidy
from saedoctor.health.types import Context, Diagnosis, Prescription, diagnosis, severity_of

HIGH_K = 64  # where k goes when L0 is too high: SAEBench's usual upper TopK setting
LOW_K = 32  # where k goes when L0 is too low: the common default


def l0_out_of_range(entry: dict[str, Any], ctx: Context) -> Diagnosis | None:
    status = ctx.status("l0")
    if status not in PROBLEMS:
        return None
    value = ctx.graded("l0")["value"]
    bands = ctx.policy.metrics["l0"].bands
    low, high = span(bands["excellent"] + bands["good"])
    if low <= value <= high:
        return None  # a custom policy put a problem band inside the healthy span: no direction
    too_high = value > high
    healthy = " or ".join(i.text for i in bands["excellent"] + bands["good"]) or "none given"
    return diagnosis(
        "l0_too_high" if too_high else "l0_too_low",
        f"L0 {num(value)} is too {'high' if too_high else 'low'}",
        severity_of(status),
        [
            f"L0 = {num(value)} active features per token ({status}; healthy: {healthy})",
            *_k_evidence(entry),
        ],
        _HIGH if too_high else _LOW,
        within_limits(entry, _prescriptions(entry, too_high), smallest_d_sae(entry, ctx)),
    )


_HIGH = (
    "Each token is explained by too many latents at once: the code is not sparse, so single "
    "features are not interpretable and many of them encode dense, generic directions. "
    "The sparsity constraint is too weak: k is too large or the L1 penalty too small."
)
_LOW = (
    "Each token is explained by too few latents: reconstruction suffers and the features that "
    "do fire become broad, mixing several concepts. The sparsity constraint is too strong: "
    "k is too small or the L1 penalty too large."
)


def _k_evidence(entry: dict[str, Any]) -> list[str]:
    k = numeric_old(entry, "top_k")
    if k is None or not is_topk(entry):
        return []
    return [f"the SAE was trained with k = {num(tidy(k))}"]


def _prescriptions(entry: dict[str, Any], too_high: bool) -> list[Prescription]:
    if not is_topk(entry):
        factor, verb = (2.0, "raise") if too_high else (0.5, "lower")
        found = scaled_penalties(entry, factor, f"{verb} the sparsity penalty to move L0")
        if found:
            return found
        # No penalty in the config to scale: TopK is the concrete change that sets L0.
        return [
            prescribe(entry, "architecture", "topk", "TopK sets L0 directly, no penalty to tune"),
            prescribe(entry, "top_k", _new_k(None, too_high), "top_k is the L0 of a TopK SAE"),
        ]
    new = _new_k(numeric_old(entry, "top_k"), too_high)
    return [prescribe(entry, "top_k", new, "top_k is the L0 of a TopK SAE")]


def _new_k(old: float | None, too_high: bool) -> int:
    """Towards 64 from above, towards 32 from below; halve or double when already past it."""
    if too_high:
        return HIGH_K if old is None or old > HIGH_K else max(1, int(old // 2))
    return LOW_K if old is None or old < LOW_K else int(old * 2)
