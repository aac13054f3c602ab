"""Rule (a): always-on features, with the bias-direction and antipodal-pair checks."""

from __future__ import annotations

from typing import Any

from saedoctor.health.clamp import within_limits
from saedoctor.health.fmt import ids, num, pct, plural
from saedoctor.health.training import numeric_old, old_value, prescribe, tidy
from saedoctor.health.types import Context, Diagnosis, Prescription, diagnosis, severity_of
from saedoctor.health.values import as_number
from saedoctor.thresholds import ALWAYS_ON_DENSITY

# |cos(W_dec[i], mean(x))| above this: the latent is the mean activation, not a feature.
BIAS_COSINE = 0.9
DIVERSITY_WEIGHT = 0.01  # the guide's value; doubled when the SAE already used it
MAX_EXPLAINED = 5  # evidence lines stay readable when a bad SAE has dozens


def always_on(entry: dict[str, Any], ctx: Context) -> Diagnosis | None:
    count = ctx.graded("always_on_count")["value"]
    if count is None or count < 1:
        return None
    explained = [e for e in entry.get("always_on_explanations") or [] if isinstance(e, dict)]
    bias = [e for e in explained if is_bias_direction(e)]
    pairs = [e for e in explained if _partner(e) is not None]
    severity = severity_of(ctx.status("always_on_count"))
    if bias and severity == "info":
        severity = "warning"  # a latent that is the mean is a training fault with a known fix
    return diagnosis(
        "always_on",
        f"{plural(int(count), 'always-on feature')}",
        severity,
        _evidence(entry, ctx, int(count), explained),
        _explanation(bias, pairs),
        _prescriptions(entry, bias),
    )


def is_bias_direction(explanation: dict[str, Any]) -> bool:
    if explanation.get("is_bias_direction") is True:
        return True
    cos = as_number(explanation.get("decoder_cos_with_mean"))
    return cos is not None and abs(cos) > BIAS_COSINE


def _partner(explanation: dict[str, Any]) -> dict[str, Any] | None:
    partner = explanation.get("antipodal_partner")
    return partner if isinstance(partner, dict) else None


def _evidence(entry: dict[str, Any], ctx: Context, count: int, explained: list[dict]) -> list[str]:
    options = ctx.run.get("options") or {}
    threshold = as_number(options.get("always_on_threshold")) or ALWAYS_ON_DENSITY
    features = (entry.get("metrics") or {}).get("always_on_features") or []
    verb = "fires" if count == 1 else "fire"
    head = f"{plural(count, 'feature')} {verb} on more than {pct(threshold, 0)} of tokens"
    evidence = [f"{head}: {ids(features)}" if features else head]
    for e in explained[:MAX_EXPLAINED]:
        evidence.extend(_feature_lines(e))
    return evidence


def _feature_lines(e: dict[str, Any]) -> list[str]:
    feature = e.get("feature")
    lines = []
    density = as_number(e.get("density"))
    if density is not None:
        line = f"feature {feature} fires on {pct(density, 1)} of tokens"
        mean = as_number(e.get("mean_activation"))
        lines.append(line + (f" (mean activation {num(mean, 3)} when active)" if mean else ""))
    cos = as_number(e.get("decoder_cos_with_mean"))
    if cos is not None:
        verdict = ": it is the mean activation direction" if is_bias_direction(e) else ""
        lines.append(f"feature {feature}'s decoder row has cosine {cos:.2f} with mean(x){verdict}")
    share = as_number(e.get("reconstruction_share"))
    if share is not None:
        lines.append(f"feature {feature} carries {pct(share, 1)} of Σ‖x̂‖²")
    if (partner := _partner(e)) is not None:
        cos_p = as_number(partner.get("encoder_cos"))
        cos_text = f" (encoder cosine {cos_p:.2f})" if cos_p is not None else ""
        lines.append(
            f"feature {feature} has an antipodal partner, feature {partner.get('feature')}"
            f"{cos_text}: a pair splitting one direction"
        )
    return lines


def _explanation(bias: list[dict], pairs: list[dict]) -> str:
    parts = [
        "A feature that fires on almost every token carries no information about which token "
        "it is on: it spends a latent (and, for TopK, one of k slots per token) on something "
        "constant, and circuit analyses see it everywhere."
    ]
    if bias:
        names = ", ".join(str(e.get("feature")) for e in bias)
        parts.append(
            f"Feature(s) {names} point along mean(x): the feature is learning the mean "
            "activation, which belongs in b_dec. Initialise b_dec at the data mean and "
            "subtract it from the input (apply_b_dec_to_input) so no latent has to carry it."
        )
    if pairs:
        parts.append(
            "An antipodal partner (encoder cosine < -0.9) means two latents encode +v and -v "
            "of one direction, so between them one is on for nearly every token: a pair "
            "splitting one direction rather than two features."
        )
    parts.append(
        "A diversity loss penalises latents that co-fire with everything and spreads the "
        "load over the dictionary."
    )
    return " ".join(parts)


CENTRED_INITS = ("mean", "geometric_median")


def _prescriptions(entry: dict[str, Any], bias: list[dict]) -> list[Prescription]:
    # Measured on the default model (docs/training.md, benchmarks/prescription_ab.py):
    # b_dec at the data mean removed every always-on latent and raised variance
    # explained; the diversity loss alone also removed them but lost reconstruction and
    # killed latents, and with b_dec already at the mean it never engaged. So b_dec comes
    # first, and the diversity loss only once b_dec already starts at the centre.
    old_init = old_value(entry, "b_dec_init")
    if old_init not in CENTRED_INITS:
        why = (
            "a decoder row is the mean direction: start b_dec at the data mean so no latent "
            "learns it"
            if bias
            else "measured (benchmarks/results/prescription_ab.json): b_dec at the data mean "
            "removed every always-on latent where a diversity loss alone cost reconstruction"
        )
        return within_limits(entry, [prescribe(entry, "b_dec_init", "mean", why)])
    old_weight = numeric_old(entry, "diversity_loss_weight")
    in_use = old_weight is not None and old_weight > 0
    weight = tidy(old_weight * 2) if in_use else DIVERSITY_WEIGHT
    found = [
        prescribe(
            entry,
            "diversity_loss_weight",
            weight,
            "b_dec already starts at the centre: penalise latents that fire on nearly every "
            "token (the guide's 0.01; doubled when already in use)",
        )
    ]
    if old_init == "mean":
        robust = "a robust centre when the mean is pulled by outlier tokens"
        found.append(prescribe(entry, "b_dec_init", "geometric_median", robust))
    return within_limits(entry, found)
