"""Pre-flight rule (d): activation-outlier severity γ = ‖μ‖/‖σ‖ of the SAE's input site is
high and its training did not centre the input from the start.

γ predicts the fraction of latents dead at initialisation (arXiv 2605.31518, Spearman 0.89
for TopK): the mean shifts every pre-activation by the latent's alignment with it, and the
latents anti-aligned with it never fire. Mean-centring (b_dec initialised to the mean and
subtracted from the input) removes the cause; without it the bias has to learn the mean,
which at high γ is slow.
"""

from __future__ import annotations

from typing import Any

from saedoctor.activations.outliers import GAMMA_HIGH
from saedoctor.health.fmt import num
from saedoctor.health.policy import PROBLEMS
from saedoctor.health.preflight import OutlierCheck, preflight_of
from saedoctor.health.training import prescribe
from saedoctor.health.types import Context, Diagnosis, Prescription, diagnosis
from saedoctor.health.values import metric_value


def preflight_outliers(entry: dict[str, Any], ctx: Context) -> Diagnosis | None:
    pre = preflight_of(entry)
    check = pre.outliers if pre is not None else None
    if check is None or not check.gamma >= GAMMA_HIGH or check.centred_at_init:
        return None
    dead = ctx.status("dead_pct") in PROBLEMS  # the prediction come true
    site = (entry.get("site") or {}).get("hook_name") or "the input site"
    return diagnosis(
        "preflight_outliers",
        f"activation outliers at {site}: γ = {check.gamma:.2f}",
        "warning" if dead else "info",
        [
            f"γ = ‖mean‖/‖std‖ = {num(check.mean_norm)} / {num(check.std_norm)} = "
            f"{check.gamma:.3f} (high from {GAMMA_HIGH}: the mean outweighs all per-token "
            "variation)",
            _init_line(entry, check),
            *_dead_line(entry, ctx),
        ],
        "The site's mean activation is larger than its per-token variation. At initialisation "
        "every latent's pre-activation is then shifted by its alignment with that mean, and "
        "the latents pointing away from it never fire: γ predicts the dead fraction at "
        "initialisation (arXiv 2605.31518, Spearman 0.89 for TopK). They revive only once the "
        "decoder bias has learned the mean, which at high γ is slow. Centre the input from "
        "the start: initialise b_dec to the mean (subtracted from the input).",
        _prescriptions(entry, check),
    )


def _init_line(entry: dict[str, Any], check: OutlierCheck) -> str:
    if not (entry.get("config") or {}).get("apply_b_dec_to_input", True):
        return (
            "b_dec is not subtracted from the input (apply_b_dec_to_input false): the "
            "input is never centred"
        )
    if check.b_dec_init is None:
        return "how b_dec was initialised: the SAE's metadata does not say"
    return f"b_dec_init = {check.b_dec_init}: the input was not centred at initialisation"


def _dead_line(entry: dict[str, Any], ctx: Context) -> list[str]:
    dead = metric_value(entry, "dead_pct")
    if dead is None:
        return []
    return [f"dead features: {num(dead)}% ({ctx.status('dead_pct')})"]


def _prescriptions(entry: dict[str, Any], check: OutlierCheck) -> list[Prescription]:
    config = entry.get("config") or {}
    if config.get("kind") == "transcoder" or not config.get("apply_b_dec_to_input", True):
        return []  # saedoctor train has no input centring for these
    why = "start b_dec at the mean: the input is centred from step 0 (arXiv 2605.31518)"
    return [prescribe(entry, "b_dec_init", "mean", why)]
