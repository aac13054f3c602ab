"""Rule (b): too many dead features, unless the horizon was too short to call them dead."""

from __future__ import annotations

from typing import Any

from saedoctor.health.clamp import within_limits
from saedoctor.health.fmt import num, plural
from saedoctor.health.policy import PROBLEMS
from saedoctor.health.rules.common import halve_expansion, may_shrink_dictionary
from saedoctor.health.training import architecture, is_topk, prescribe
from saedoctor.health.types import Context, Diagnosis, Prescription, diagnosis, severity_of
from saedoctor.health.values import metric_value
from saedoctor.thresholds import DEAD_DENSITY

# A latent exactly at the threshold should fire this many times before "never saw it" means
# "dead" rather than "rare": below it, Poisson noise alone makes live latents look dead.
MIN_EXPECTED_FIRINGS = 20
RECOMMENDED_EVAL_TOKENS = 100_000  # 50 expected firings at the threshold


def dead_features(entry: dict[str, Any], ctx: Context) -> Diagnosis | None:
    status = ctx.status("dead_pct")
    if status not in PROBLEMS:
        return None
    tokens = metric_value(entry, "tokens_seen")
    evidence = _evidence(entry, ctx.graded("dead_pct")["value"], tokens)
    if tokens is not None and tokens * DEAD_DENSITY < MIN_EXPECTED_FIRINGS:
        return _short_horizon(entry, ctx, tokens, evidence)
    return diagnosis(
        "dead_features",
        f"{ctx.graded('dead_pct')['value']:.2f}% dead features",
        severity_of(status),
        evidence,
        "Latents that never fire cost parameters and compute and explain nothing. They die "
        "when the encoder pushes them below zero early and nothing brings them back, or when "
        "the dictionary is larger than the data needs. An auxiliary loss (AuxK) that asks "
        "dead latents to reconstruct the residual revives them; a smaller dictionary or more "
        "training tokens gives each latent enough data to specialise.",
        _training_fixes(entry, ctx),
    )


def _evidence(entry: dict[str, Any], dead_pct: float, tokens: float | None) -> list[str]:
    dead = metric_value(entry, "dead_count")
    d_sae = (entry.get("config") or {}).get("d_sae")
    counted = f" ({num(dead)} of {num(d_sae)})" if dead is not None and d_sae else ""
    evidence = [f"{dead_pct:.2f}% of features{counted} fire on fewer than 0.05% of tokens"]
    never = metric_value(entry, "never_fired_count")
    if never is not None:
        evidence.append(f"{plural(int(never), 'feature')} never fired at all")
    if tokens is not None:
        evidence.append(
            f"measured over {num(int(tokens))} tokens: a feature at the 0.05% threshold "
            f"would fire about {tokens * DEAD_DENSITY:.1f} times"
        )
    return evidence


def _short_horizon(
    entry: dict[str, Any], ctx: Context, tokens: float, evidence: list[str]
) -> Diagnosis:
    needed = int(MIN_EXPECTED_FIRINGS / DEAD_DENSITY)
    return diagnosis(
        "dead_features",
        f"{ctx.graded('dead_pct')['value']:.2f}% dead features: too few tokens to tell",
        "info",
        evidence + [f"at least {num(needed)} tokens are needed to call a feature dead"],
        "'Dead' means fired on fewer than 0.05% of tokens, and over this few tokens a live "
        "but rare feature is expected to fire only a handful of times: absence is noise, not "
        "death. Evaluate on more tokens before retraining anything.",
        [
            {
                "field": "eval_tokens",
                "old": int(tokens),
                "new": RECOMMENDED_EVAL_TOKENS,
                "why": "a diagnose option, not a training change: rerun `saedoctor diagnose "
                f"--tokens {RECOMMENDED_EVAL_TOKENS}` so rare features get a chance to fire",
            }
        ],
    )


def _training_fixes(entry: dict[str, Any], ctx: Context) -> list[Prescription]:
    found: list[Prescription] = []
    if architecture(entry) is not None and not is_topk(entry):
        found.append(
            prescribe(
                entry,
                "architecture",
                "topk",
                "TopK with AuxK keeps latents alive without an L1 penalty pushing them to zero",
            )
        )
    # Measured (docs/prescriptions.md): AuxK changed nothing and doubling the tokens cost a
    # diversity band, so neither is prescribed; b_dec at the mean (the pre-flight's and the
    # always-on rule's prescription) is what revived the latents.
    if may_shrink_dictionary(ctx):
        found += halve_expansion(entry, "fewer latents for the same data: fewer starve and die")
    return within_limits(entry, found)
