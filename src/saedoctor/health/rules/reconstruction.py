"""Rule (d): poor reconstruction (loss recovered, or variance explained standing in for it)."""

from __future__ import annotations

from typing import Any

from saedoctor.health.clamp import within_limits
from saedoctor.health.fmt import graded_recon, num, pct
from saedoctor.health.policy import PROBLEMS
from saedoctor.health.rules.common import (
    double_expansion,
    may_grow_dictionary,
    scaled_penalties,
    smallest_d_sae,
)
from saedoctor.health.training import is_topk, numeric_old, prescribe
from saedoctor.health.types import Context, Diagnosis, Prescription, diagnosis, severity_of
from saedoctor.health.values import metric_value

MAX_K = 200  # top of the excellent L0 band: a larger k trades sparsity away
DEFAULT_K = 64


def poor_reconstruction(entry: dict[str, Any], ctx: Context) -> Diagnosis | None:
    status = ctx.status("loss_recovered")
    if status not in PROBLEMS:
        return None
    graded = ctx.graded("loss_recovered")
    return diagnosis(
        "poor_reconstruction",
        f"poor reconstruction: {graded_recon(graded)}",
        severity_of(status),
        [f"{graded_recon(graded)} ({status})", *_supporting(entry, graded["source"])],
        "The SAE's reconstruction loses much of what the model computes, so features found in "
        "it describe only part of the activation and patching it in changes the model's "
        "behaviour. The dictionary is too small or too sparse for this site, or training "
        "stopped early: give it more latents or a larger k, and more tokens. Late layers are "
        "the hardest (larger norms, next-token directions) and need the most capacity.",
        _prescriptions(entry, ctx),
    )


def _supporting(entry: dict[str, Any], source: str) -> list[str]:
    lines = []
    ve = metric_value(entry, "variance_explained")
    if source != "variance_explained" and ve is not None:
        lines.append(f"variance explained {pct(ve)}")
    if (cos := metric_value(entry, "cossim")) is not None:
        lines.append(f"mean cosine(x, x̂) = {cos:.3f}")
    if (ratio := metric_value(entry, "l2_ratio")) is not None:
        lines.append(f"‖x̂‖/‖x‖ = {ratio:.3f}")
    if (layer := (entry.get("site") or {}).get("layer")) is not None:
        lines.append(f"site: layer {num(layer)}")
    return lines


def _prescriptions(entry: dict[str, Any], ctx: Context) -> list[Prescription]:
    found: list[Prescription] = []
    l0_high = ctx.status("l0") in PROBLEMS and _l0_above_healthy(ctx)
    if is_topk(entry) and not l0_high:
        old = numeric_old(entry, "top_k")
        new = DEFAULT_K if old is None else min(MAX_K, int(old * 2))
        if old is None or new > old:
            found.append(prescribe(entry, "top_k", new, "more active latents per token"))
    if not is_topk(entry) and not l0_high:
        found += scaled_penalties(entry, 0.5, "a weaker sparsity penalty buys reconstruction")
    if may_grow_dictionary(ctx):
        found += double_expansion(entry, "more latents to cover what is left unexplained")
    # Doubling the training tokens was measured to cost a diversity band (docs/prescriptions.md).
    return within_limits(entry, found, smallest_d_sae(entry, ctx))


def _l0_above_healthy(ctx: Context) -> bool:
    """Raising k would fight the L0 rule when L0 is already too high."""
    value = ctx.graded("l0")["value"]
    bands = ctx.policy.metrics["l0"].bands
    highs = [i.high for i in bands["excellent"] + bands["good"]]
    return value is not None and bool(highs) and value > max(highs)
