"""Rule (e): high absorption (redundant features: near-parallel decoder rows)."""

from __future__ import annotations

from typing import Any

from saedoctor.health.clamp import within_limits
from saedoctor.health.fmt import num
from saedoctor.health.policy import PROBLEMS
from saedoctor.health.rules.common import halve_expansion, may_shrink_dictionary
from saedoctor.health.training import numeric_old, prescribe, tidy
from saedoctor.health.types import Context, Diagnosis, Prescription, diagnosis, severity_of
from saedoctor.health.values import metric_value

ORTHOGONALITY_WEIGHT = 0.01  # a starting weight for ‖W_dec W_decᵀ - I‖²; doubled if in use


def high_absorption(entry: dict[str, Any], ctx: Context) -> Diagnosis | None:
    status = ctx.status("absorption")
    if status not in PROBLEMS:
        return None
    value = ctx.graded("absorption")["value"]
    return diagnosis(
        "high_absorption",
        f"high feature absorption: {value:.3f}",
        severity_of(status),
        _evidence(entry, value, status),
        "Many features have a near-duplicate: their decoder rows point almost the same way, so "
        "one concept is split over several latents (or absorbed into a broader one) and "
        "attributions scatter between them. An orthogonality penalty on the decoder rows "
        "pushes duplicates apart; a smaller dictionary leaves less room to duplicate.",
        _prescriptions(entry, ctx),
    )


def _evidence(entry: dict[str, Any], value: float, status: str) -> list[str]:
    metrics = entry.get("metrics") or {}
    alive = metric_value(entry, "absorption_features")
    over = f" over {num(int(alive))} alive features" if alive is not None else ""
    lines = [f"mean max decoder cosine between features = {value:.3f}{over} ({status})"]
    if method := metrics.get("absorption_method"):
        lines.append(f"method: {method}")
    return lines


def _prescriptions(entry: dict[str, Any], ctx: Context) -> list[Prescription]:
    old = numeric_old(entry, "decoder_orthogonality_weight")
    new = tidy(old * 2) if old is not None and old > 0 else ORTHOGONALITY_WEIGHT
    found = [prescribe(entry, "decoder_orthogonality_weight", new, "push duplicate rows apart")]
    if may_shrink_dictionary(ctx):
        found += halve_expansion(entry, "a smaller dictionary has less room for duplicates")
    return within_limits(entry, found)
