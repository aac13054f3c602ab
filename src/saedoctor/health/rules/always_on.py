"""Rule (a): always-on features, with the bias-direction and antipodal-pair checks.

When the entry carries `dense_latents` covering its always-on features, each feature's class
(health/taxonomy.py, arXiv 2506.15679) decides: a mean-direction or unclassified latent gets
today's prescriptions; a latent of any other class is a real direction of the model, kept and
not retrained for. Entries without `dense_latents` are diagnosed exactly as before.
"""

from __future__ import annotations

from typing import Any

from saedoctor.health.clamp import within_limits
from saedoctor.health.fmt import ids, num, pct, plural
from saedoctor.health.taxonomy import BY_NAME, EXCLUDE, FIX, NOTE, classify, consequence, describe
from saedoctor.health.training import old_value, prescribe
from saedoctor.health.types import Context, Diagnosis, Prescription, diagnosis, severity_of
from saedoctor.health.values import as_number
from saedoctor.thresholds import ALWAYS_ON_DENSITY

# |cos(W_dec[i], mean(x))| above this: the latent is the mean activation, not a feature.
BIAS_COSINE = 0.9
MAX_EXPLAINED = 5  # evidence lines stay readable when a bad SAE has dozens


def always_on(entry: dict[str, Any], ctx: Context) -> Diagnosis | None:
    count = ctx.graded("always_on_count")["value"]
    if count is None or count < 1:
        return None
    explained = [e for e in entry.get("always_on_explanations") or [] if isinstance(e, dict)]
    features = _always_on_ids(entry, explained)
    classes = dense_classes(entry, features)
    if classes:
        return _classified(entry, ctx, int(count), explained, features, classes)
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
    # Measured (docs/prescriptions.md, benchmarks/results/prescriptions.json): a centred b_dec
    # removed every always-on latent (68.7 -> 0 over 3 seeds); the diversity loss at the
    # guide's 0.01 changed nothing, so it is not prescribed.
    old_init = old_value(entry, "b_dec_init")
    if old_init not in CENTRED_INITS:
        why = (
            "a decoder row is the mean direction: start b_dec at the data mean so no latent "
            "learns it"
            if bias
            else "a centred b_dec removed every always-on latent in the prescription benchmark"
        )
        return within_limits(entry, [prescribe(entry, "b_dec_init", "mean", why)])
    if old_init == "mean":
        robust = "a robust centre when the mean is pulled by outlier tokens"
        return within_limits(entry, [prescribe(entry, "b_dec_init", "geometric_median", robust)])
    return []


# --- with the dense-latent taxonomy (arXiv 2506.15679) -------------------------------------

Classes = dict[int, tuple[str | None, dict[str, Any]]]  # feature -> (class, evidence numbers)


def dense_classes(entry: dict[str, Any], features: list[int]) -> Classes:
    """The `dense_latents` entries of the given features. One without a class key (not yet
    classified) is classified here from its evidence."""
    found: Classes = {}
    for item in entry.get("dense_latents") or []:
        if not isinstance(item, dict) or item.get("feature") not in features:
            continue
        evidence = item.get("evidence") if isinstance(item.get("evidence"), dict) else {}
        latent_class = item["class"] if "class" in item else classify(evidence)
        # A class this version does not know is treated as unclassified: today's advice.
        found[item["feature"]] = (
            latent_class if isinstance(latent_class, str) and latent_class in BY_NAME else None,
            evidence,
        )
    return found


def _always_on_ids(entry: dict[str, Any], explained: list[dict]) -> list[int]:
    """The always-on feature ids the entry names, in its order, then the explained ones."""
    listed = (entry.get("metrics") or {}).get("always_on_features") or []
    out: list[int] = []
    for f in [*listed, *(e.get("feature") for e in explained)]:
        if isinstance(f, int) and not isinstance(f, bool) and f not in out:
            out.append(f)
    return out


def _classified(
    entry: dict[str, Any],
    ctx: Context,
    count: int,
    explained: list[dict],
    features: list[int],
    classes: Classes,
) -> Diagnosis:
    by_feature = {e.get("feature"): e for e in explained}
    named = {f: classes[f][0] if f in classes else None for f in features}
    # Unclassified latents keep today's bias check; a classified one is judged by its class.
    bias = [f for f in features if named[f] == "mean_direction"
            or (named[f] is None and is_bias_direction(by_feature.get(f, {})))]  # fmt: skip
    plain = [f for f in features if consequence(named[f]) == FIX and f not in bias]
    unexamined = max(count - len(features), 0)  # always-on features the entry does not name
    retrain = bool(bias or plain or unexamined)
    severity = severity_of(ctx.status("always_on_count"))
    if not retrain:
        severity = "info"  # real directions of the model: worth knowing, nothing to repair
    elif bias and severity == "info":
        severity = "warning"  # as today: a latent that is the mean is a fault with a known fix
    explanation = _classified_explanation(features, named, bias, plain, unexamined)
    bias_rows = [by_feature.get(f) or {"feature": f} for f in bias]
    return diagnosis(
        "always_on",
        f"{plural(count, 'always-on feature')}",
        severity,
        _classified_evidence(entry, ctx, count, by_feature, classes, features),
        explanation,
        _prescriptions(entry, bias_rows) if retrain else [],
    )


def _classified_evidence(
    entry: dict[str, Any],
    ctx: Context,
    count: int,
    by_feature: dict[Any, dict],
    classes: Classes,
    features: list[int],
) -> list[str]:
    evidence = _evidence(entry, ctx, count, [])
    for f in features[:MAX_EXPLAINED]:
        evidence.extend(_feature_lines(by_feature[f]) if f in by_feature else [])
        if f not in classes:
            continue
        latent_class, numbers = classes[f]
        if latent_class is None:
            evidence.append(f"feature {f}: no dense-latent class fits its evidence")
        else:
            evidence.append(
                f"feature {f}: class {latent_class} ({describe(latent_class, numbers)})"
            )
    return evidence


def _classified_explanation(
    features: list[int],
    named: dict[int, str | None],
    bias: list[int],
    plain: list[int],
    unexamined: int,
) -> str:
    parts = []
    if plain or unexamined:
        lead = f"Feature(s) {ids(plain)} fit no dense-latent class. " if plain else ""
        parts.append(lead + _explanation([], []))
    if bias:
        parts.append(
            f"Feature(s) {ids(bias)} point along the mean: the feature is learning the mean "
            "activation, which belongs in b_dec. Initialise b_dec at the data mean and "
            "subtract it from the input (apply_b_dec_to_input) so no latent has to carry it."
        )
    if excluded := [f"{f} ({named[f]})" for f in features if consequence(named[f]) == EXCLUDE]:
        parts.append(
            f"Feature(s) {ids(excluded)} belong to classes that arXiv 2506.15679 found to be "
            "real directions of the model, not training faults: first-token and position "
            "tracking, antipodal pairs that split one direction between +v and -v, and "
            "writes into the unembedding's null space that regulate confidence. Keep them "
            "and do not retrain for them; exclude them from circuit graphs, where a latent "
            "active on almost every token links to everything."
        )
    if noted := [f"{f} ({named[f]})" for f in features if consequence(named[f]) == NOTE]:
        parts.append(
            f"Feature(s) {ids(noted)} are real directions too: a top principal component of "
            "the activations, or a small set of tokens (letter- or part-of-speech-like) "
            "common enough to fire almost everywhere. Kept; noted here."
        )
    if not (plain or bias or unexamined):
        parts.append("No retraining is prescribed for them.")
    return " ".join(parts)
