"""Pre-flight rule (b): the activations are not at the scale the SAE expects.

Two signals. The scan: the SAE reconstructs its input clearly better when that input is
rescaled by c (half an octave steps, ×1/16 … ×16) than as fed — e.g. an SAE trained on
SAELens-normalised activations (mean norm sqrt(d_in)) whose scaling factor was never
folded into the weights. The record: saedoctor's trainer wrote down the scale it trained
at (`input_scale`), and the activations' spread differs from it by ×2 or more.
"""

from __future__ import annotations

import math
from typing import Any

from saedoctor.health.fmt import num
from saedoctor.health.preflight import NormCheck, NormHint, clearly_worse, preflight_of
from saedoctor.health.rules.preflight_site import misplaced
from saedoctor.health.training import tidy
from saedoctor.health.types import Context, Diagnosis, Prescription, diagnosis

# A scale counts as "other" from one octave off: the scan's own step is half an octave, and
# a well-scaled SAE's FVU rises on both sides of ×1 (default SAE: 0.23 at ×1, 0.30 at ×√2).
MIN_OCTAVES = 1.0
# The spread of one site varies far less than ×2 between corpora of one model; ×10 is a
# forgotten normalisation.
NORM_RATIO = 2.0
_STATISTIC = {"centred_rms": "centred RMS norm sqrt(E‖x − μ‖²)", "mean_norm": "mean norm E‖x‖"}


def misscaled(check: NormCheck) -> bool:
    """Whether a rescaled input fits clearly better than the input as fed."""
    best = check.best
    if check.gap is None or abs(math.log2(best.scale)) < MIN_OCTAVES - 1e-9:
        return False
    return clearly_worse(check.at_one.fvu, best.fvu, check.gap)


def recorded_mismatch(check: NormCheck) -> tuple[NormHint, float] | None:
    """(the trainer's recorded scale, measured / expected) when they differ by NORM_RATIO."""
    for hint in check.hints:
        if hint.recorded:
            ratio = _measured(check, hint) / hint.norm
            if ratio >= NORM_RATIO or ratio <= 1 / NORM_RATIO:
                return hint, ratio
    return None


def preflight_norm(entry: dict[str, Any], ctx: Context) -> Diagnosis | None:
    pre = preflight_of(entry)
    check = pre.norm if pre is not None else None
    if check is None or (pre.site is not None and misplaced(pre.site)):
        return None  # a wrong site explains a wrong scale: the site rule says what to do
    scanned, recorded = misscaled(check), recorded_mismatch(check)
    if not scanned and recorded is None:
        return None
    scale = check.best.scale if scanned else 1 / recorded[1]  # type: ignore[index]
    return diagnosis(
        "preflight_norm",
        f"input scale: the SAE expects activations ×{num(scale, 3)} of these",
        "critical" if scanned else "warning",
        [*_scan_lines(check, scanned), *_norm_lines(check, scale)],
        "The SAE's input is not at the scale it was trained at: inputs larger or smaller than "
        "it learned push every pre-activation past or short of its thresholds, so L0, dead "
        "and always-on features and the reconstruction all read wrong. Typical causes: "
        "activations normalised in training (SAELens normalize_activations, a dataset-wise "
        "scaling factor) but not here, or the reverse, or another model or precision.",
        [_rescale(entry, scale)],
    )


def _scan_lines(check: NormCheck, scanned: bool) -> list[str]:
    best, one = check.best, check.at_one
    gap = f"; {check.gap.text()}" if check.gap is not None else ""
    lo, hi = check.scan[0].scale, check.scan[-1].scale
    line = (f"FVU {one.fvu:.3f} as fed vs {best.fvu:.3f} with the input ×{num(best.scale, 3)} "
            f"(best of {len(check.scan)} scales ×{num(lo, 3)} … ×{num(hi, 3)}{gap})")  # fmt: skip
    return [line if scanned or best.scale != 1.0 else f"FVU {one.fvu:.3f} as fed, the best scale"]


def _norm_lines(check: NormCheck, scale: float) -> list[str]:
    lines = [
        f"activations: mean norm {num(check.mean_norm)}, centred RMS norm "
        f"{num(check.centred_rms)}; the SAE fits inputs ×{num(scale, 3)} of these"
    ]
    for hint in check.hints:
        measured = _measured(check, hint)
        lines.append(f"{hint.source}: expects {_STATISTIC[hint.statistic]} {num(hint.norm)}, "
                     f"measured {num(measured)} (×{num(hint.norm / measured, 3)})")  # fmt: skip
    return lines


def _measured(check: NormCheck, hint: NormHint) -> float:
    return check.centred_rms if hint.statistic == "centred_rms" else check.mean_norm


def _rescale(entry: dict[str, Any], scale: float) -> Prescription:
    transcoder = (entry.get("config") or {}).get("kind") == "transcoder"
    fold = "W_enc (and W_skip) × c" if transcoder else "W_enc × c, W_dec and b_dec ÷ c"
    return Prescription(
        field="eval_input_scale", old=1, new=tidy(scale),
        why=f"not a training change: feed the SAE activations × c (c = {num(scale, 3)}) or "
        f"fold c into its weights ({fold}; SAELens fold_activation_norm_scaling_factor)",
    )  # fmt: skip
