"""Rule (f): training-data mismatch.

Two signals. With a second corpus (`corpus_comparison`): a per-feature density shift (JSD)
whose 95 % interval lies wholly above the threshold, a large change of variance
explained / loss recovered between the corpora, or — when the second corpus is the SAE's own
training dataset (SPEC §4: "metrics on the training corpus vs the evaluation corpus") — a
smaller advantage on that training domain; a change counts only when its interval excludes 0,
so sampling noise alone never fires it. Without one: the
SAE's training corpus is a different dataset from the evaluation corpus AND it graded poor
(a different corpus alone is normal: most SAEs are used off their training data).
"""

from __future__ import annotations

from typing import Any

from saedoctor.health.clamp import within_limits
from saedoctor.health.fmt import num, pct
from saedoctor.health.training import prescribe
from saedoctor.health.types import Context, Diagnosis, Prescription, diagnosis
from saedoctor.health.values import as_number, metric_value

# JSD (bits) between the two corpora's normalised feature-density vectors. Sampling noise
# between two splits of one corpus is ~0.001 bits at the default 60k tokens × L0 32 (0.025
# with only 60k firings in all, simulated); two domains (prose vs code) sit well above 0.1.
JSD_THRESHOLD = 0.1
DROP_THRESHOLD = 0.10  # absolute change of variance explained / loss recovered (10 points)
# With the SAE's own training dataset as the second corpus, a gap in its favour is what a
# domain it never learned looks like (a harder corpus would also show one: the prescription
# benchmark's control, an SAE trained on the evaluated corpus, tells the two apart there).
OWN_DOMAIN_GAP = 0.05
SEVERE_DROP = 0.20
RECON_KEYS = ("loss_recovered", "variance_explained")
DELTA_KEYS = RECON_KEYS + ("l0", "dead_pct", "always_on_count")


def data_mismatch(entry: dict[str, Any], ctx: Context) -> Diagnosis | None:
    comparison = entry.get("corpus_comparison")
    if isinstance(comparison, dict):
        found = _from_comparison(entry, ctx, comparison)
        if found is not None:
            return found
    return _from_training_corpus(entry, ctx)


def dataset_name(corpus: Any) -> str | None:
    """'python-docs@test' -> 'python-docs': two splits of one dataset are not a mismatch."""
    return str(corpus).split("@", 1)[0].strip().lower() if corpus else None


def training_corpus(entry: dict[str, Any]) -> str | None:
    corpus = ((entry.get("config") or {}).get("metadata") or {}).get("training_corpus")
    return str(corpus) if corpus else None


def _from_comparison(
    entry: dict[str, Any], ctx: Context, comparison: dict[str, Any]
) -> Diagnosis | None:
    jsd = as_number(comparison.get("density_jsd"))
    deltas = comparison.get("deltas") or {}
    drops = {k: d for k in RECON_KEYS if (d := as_number(deltas.get(k))) is not None}
    intervals = comparison.get("delta_intervals") or {}
    big = {k: d for k, d in drops.items()
           if abs(d) >= DROP_THRESHOLD and _significant(intervals.get(k))}  # fmt: skip
    main_name = ctx.run.get("corpus")
    other_name = comparison.get("corpus") or ctx.run.get("compare_corpus")
    own = _own_domain_gap(entry, main_name, other_name, drops, intervals)
    shifted = jsd is not None and _above(jsd, comparison.get("density_jsd_interval"))
    if not shifted and not big and not own:
        return None
    main, other = main_name or "the main corpus", other_name or "the compare corpus"
    changed = {**big, **own}
    severity = _severity(changed, ctx)
    evidence = _comparison_evidence(entry, comparison, jsd, main, other)
    if own:
        evidence.append(
            f"{other} is the SAE's own training dataset ({training_corpus(entry)}): it "
            f"reconstructs it better by {', '.join(f'{k} {d:+.3f}' for k, d in own.items())} "
            f"(fires at {OWN_DOMAIN_GAP} with the interval above 0)"
        )
    return diagnosis(
        "data_mismatch",
        f"training-data mismatch between {main} and {other}",
        severity,
        evidence,
        "The SAE behaves differently on the two corpora: features it uses on one are silent on "
        "the other and reconstruction changes. An SAE only learns the directions its "
        "training data exercises, so on another domain it falls back on generic, dense "
        "features. Train (or fine-tune) it on the domain you will analyse.",
        _dataset(entry, _worse_corpus(entry, main_name, other_name, changed)),
    )


def _own_domain_gap(
    entry: dict[str, Any], main: str | None, other: str | None,
    drops: dict[str, float], intervals: dict[str, Any],
) -> dict[str, float]:
    """Reconstruction changes in favour of the SAE's own training dataset when that dataset is
    the second corpus and the main corpus is another one (deltas are second minus main)."""
    trained = dataset_name(training_corpus(entry))
    if trained is None or dataset_name(other) != trained or dataset_name(main) == trained:
        return {}
    return {k: d for k, d in drops.items()
            if d >= OWN_DOMAIN_GAP and _significant(intervals.get(k))}  # fmt: skip


def _worse_corpus(
    entry: dict[str, Any], main: str | None, other: str | None, big: dict[str, float]
) -> str | None:
    """The corpus the SAE serves worse: lower reconstruction, else the one it did not see."""
    if big:
        return other if next(iter(big.values())) < 0 else main
    trained = dataset_name(training_corpus(entry))
    return main if trained is not None and dataset_name(other) == trained else other


def _above(jsd: float, interval: Any) -> bool:
    """The shift is past the threshold beyond sampling noise: the whole 95 % interval is
    above it (a report without intervals falls back on the point estimate)."""
    if isinstance(interval, list) and len(interval) == 2:
        return interval[0] > JSD_THRESHOLD
    return jsd > JSD_THRESHOLD


def _significant(interval: Any) -> bool:
    """A change whose 95 % interval excludes 0 (or with no interval to say otherwise)."""
    if not (isinstance(interval, list) and len(interval) == 2):
        return True
    low, high = interval
    return not low <= 0 <= high


def _severity(big: dict[str, float], ctx: Context) -> str:
    if any(abs(d) >= SEVERE_DROP for d in big.values()):
        return "critical"
    if big or ctx.grading.get("grade") == "poor":
        return "warning"
    return "info"  # density shift alone: different domains use different features


def _comparison_evidence(
    entry: dict[str, Any], comparison: dict[str, Any], jsd: float | None, main: str, other: str
) -> list[str]:
    lines = []
    if jsd is not None:
        interval = comparison.get("density_jsd_interval")
        ci = (f", 95 % interval {interval[0]:.3f}–{interval[1]:.3f}"
              if isinstance(interval, list) and len(interval) == 2 else "")
        lines.append(
            f"feature-density JSD between {main} and {other} = {jsd:.3f} bits{ci} "
            f"(threshold {JSD_THRESHOLD}: fires when the whole interval is above it)"
        )
    appeared, disappeared = comparison.get("appeared"), comparison.get("disappeared")
    if isinstance(appeared, list) and isinstance(disappeared, list):
        lines.append(
            f"{num(len(appeared))} features alive only on {other}, "
            f"{num(len(disappeared))} alive only on {main}"
        )
    lines += _delta_lines(entry, comparison, main, other)
    return lines


def _delta_lines(
    entry: dict[str, Any], comparison: dict[str, Any], main: str, other: str
) -> list[str]:
    deltas = comparison.get("deltas") or {}
    compare_metrics = comparison.get("metrics") or {}
    lines = []
    for key in DELTA_KEYS:
        delta = as_number(deltas.get(key))
        if delta is None:
            continue
        show = pct if key in RECON_KEYS else num
        here, there = metric_value(entry, key), as_number(compare_metrics.get(key))
        values = ""
        if here is not None and there is not None:
            values = f"{show(here)} on {main} vs {show(there)} on {other}, "
        lines.append(f"{key.replace('_', ' ')}: {values}change {delta:+.4g}")
    return lines


def _from_training_corpus(entry: dict[str, Any], ctx: Context) -> Diagnosis | None:
    trained, evaluated = training_corpus(entry), ctx.run.get("corpus")
    if not trained or not evaluated or dataset_name(trained) == dataset_name(evaluated):
        return None
    if ctx.grading.get("grade") != "poor":
        return None
    held = ", ".join(ctx.grading.get("held_back_by") or [])
    return diagnosis(
        "data_mismatch",
        f"trained on {trained}, evaluated on {evaluated}",
        "warning",
        [
            f"training corpus {trained} is a different dataset from the evaluation corpus "
            f"{evaluated}",
            f"graded poor, held back by {held}",
        ],
        "The SAE was trained on one domain and is judged on another, and it grades poor here. "
        "An SAE only learns the directions its training data exercises: off-domain it "
        "reconstructs worse and leans on generic, dense features. Train it on the domain you "
        "will analyse (the guide's FinLlama case: WikiText-103 SAE, financial text).",
        _dataset(entry, str(evaluated)),
    )


def _dataset(entry: dict[str, Any], target: str | None) -> list[Prescription]:
    """Train on the target's dataset, its train split: never on the evaluation split itself."""
    if not target or dataset_name(target) == dataset_name(training_corpus(entry)):
        return []
    base = target.split("@", 1)[0]
    new = f"{base}@train" if "@" in target else target
    why = f"train on the domain it is evaluated on ({target})"
    return within_limits(entry, [prescribe(entry, "dataset", new, why)])
