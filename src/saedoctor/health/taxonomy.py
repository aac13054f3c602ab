"""The dense-latent taxonomy of arXiv 2506.15679: which kind of dense latent a feature is.

Each class is a pure test of the evidence (`metrics/dense_latents.py`), tried in the report's
precedence; the first that holds names the class, none leaves the feature unclassified. The
class decides what the always-on diagnosis prescribes: only a latent that learned the mean is
a training fault with a fix; the others are real directions of the model, to keep.

Evidence is a `DenseLatentEvidence` or the `evidence` object of a report's `dense_latents`
entry (a report read back from disk); a number that is absent or None never satisfies a test.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from saedoctor.health.fmt import pct
from saedoctor.health.values import as_number
from saedoctor.metrics.always_on import ANTIPODAL_COSINE, BIAS_COSINE
from saedoctor.metrics.dense_latents import DenseLatentEvidence

Evidence = DenseLatentEvidence | Mapping[str, Any]

# A BOS / first-token latent fires almost only there; 0.9 leaves room for the odd firing
# elsewhere (a document boundary inside a sequence) without admitting a latent that merely
# prefers early tokens, which the position test catches.
FIRST_TOKEN_SHARE = 0.9
# |Pearson r| with position: above 0.5, position explains over a quarter of the activation's
# variance (r² > 0.25), far beyond what token identity leaves to chance over many sequences.
POSITION_CORR = 0.5
# An antipodal pair (the paper's main geometric finding): encoder rows nearly opposite
# (cosine below metrics' -0.9) whose densities add to about 1, i.e. +v and -v of one direction
# taking turns on nearly every token. 0.1 either side allows tokens where neither half
# clears its threshold, or both fire, on up to a tenth of the tokens.
ANTIPODAL_DENSITY_TOLERANCE = 0.1
# Over half the decoder row's squared norm where the unembedding cannot read it: the latent
# mostly writes what the logits do not see (the paper's entropy / norm-regulating latents).
NULL_SPACE_SHARE = 0.5
# |cos| of the encoder or decoder row with the mean: today's bias-direction threshold.
MEAN_COSINE = BIAS_COSINE
# |cos| with one of the site's top principal components: the same bar as the mean direction,
# a row that is that component up to noise.
PC_COSINE = 0.9
# Five tokens take over 80% of the sampled firings: a letter / part-of-speech-like token set.
TOKEN_TOP5_SHARE = 0.8
# Below 20 sampled firings, five tokens taking 80% happens by chance on small samples.
MIN_TOKEN_SAMPLE = 20


def value(evidence: Evidence, name: str) -> float | None:
    """One evidence number, or None when absent, None or NaN."""
    if isinstance(evidence, DenseLatentEvidence):
        return as_number(getattr(evidence, name))
    return as_number(evidence.get(name))


def first_token(evidence: Evidence) -> bool:
    share = value(evidence, "first_token_share")
    return share is not None and share > FIRST_TOKEN_SHARE


def position(evidence: Evidence) -> bool:
    corr = value(evidence, "position_corr")
    return corr is not None and abs(corr) > POSITION_CORR


def antipodal_pair(evidence: Evidence) -> bool:
    cos, total = value(evidence, "antipodal_cosine"), value(evidence, "density_sum")
    if cos is None or total is None or value(evidence, "antipodal_partner") is None:
        return False
    return cos < ANTIPODAL_COSINE and abs(total - 1) <= ANTIPODAL_DENSITY_TOLERANCE


def null_space(evidence: Evidence) -> bool:
    share = value(evidence, "null_space_share")
    return share is not None and share > NULL_SPACE_SHARE


def mean_direction(evidence: Evidence) -> bool:
    cos = value(evidence, "mean_cosine")
    return cos is not None and abs(cos) > MEAN_COSINE


def principal_component(evidence: Evidence) -> bool:
    cos = value(evidence, "pc_cosine")
    return cos is not None and abs(cos) > PC_COSINE


def token_set(evidence: Evidence) -> bool:
    share, sample = value(evidence, "token_top5_share"), value(evidence, "token_sample")
    if share is None or sample is None:
        return False
    return sample >= MIN_TOKEN_SAMPLE and share > TOKEN_TOP5_SHARE


# What each class means for the always-on prescription.
FIX = "fix"  # a training fault: b_dec at the data mean (today's prescription)
EXCLUDE = "exclude"  # a real direction: keep, exclude from circuit graphs, do not retrain
NOTE = "note"  # a real direction: keep, noted


@dataclass(frozen=True)
class LatentClass:
    name: str
    test: Callable[[Evidence], bool]
    consequence: str
    describe: Callable[[Evidence], str]  # the evidence number that decided it, as a phrase


def _num(evidence: Evidence, name: str, digits: int = 2) -> str:
    v = value(evidence, name)
    return "?" if v is None else f"{v:.{digits}f}"


def _share(evidence: Evidence, name: str) -> str:
    v = value(evidence, name)
    return "?" if v is None else pct(v, 1)


def _text(evidence: Evidence, name: str, default: str) -> str:
    if isinstance(evidence, DenseLatentEvidence):
        found = getattr(evidence, name)
    else:
        found = evidence.get(name)
    return found if isinstance(found, str) else default


def _pair_phrase(e: Evidence) -> str:
    return (
        f"encoder cosine {_num(e, 'antipodal_cosine')} with feature "
        f"{value(e, 'antipodal_partner')}, densities summing to {_num(e, 'density_sum')}"
    )


def _pc_phrase(e: Evidence) -> str:
    index = value(e, "pc_index")
    which = "?" if index is None else int(index) + 1  # 1 = the top component, for readers
    return f"|cosine| {_num(e, 'pc_cosine')} with principal component {which}"


def _token_phrase(e: Evidence) -> str:
    sample = value(e, "token_sample")
    return (
        f"its 5 most frequent tokens take {_share(e, 'token_top5_share')} of "
        f"{'?' if sample is None else int(sample)} sampled firings"
    )


# In the precedence the report documents: the first test that holds names the class.
CLASSES: tuple[LatentClass, ...] = (
    LatentClass("first_token", first_token, EXCLUDE,
                lambda e: f"{_share(e, 'first_token_share')} of firings on the first token"),
    LatentClass("position", position, EXCLUDE,
                lambda e: f"correlation {_num(e, 'position_corr')} with token position"),
    LatentClass("antipodal_pair", antipodal_pair, EXCLUDE, _pair_phrase),
    LatentClass("null_space", null_space, EXCLUDE,
                lambda e: f"{_share(e, 'null_space_share')} of the decoder norm² in W_U's "
                "near-null space"),
    LatentClass("mean_direction", mean_direction, FIX,
                lambda e: f"|cosine| {_num(e, 'mean_cosine')} of the "
                f"{_text(e, 'mean_cosine_of', 'decoder')} row with the mean"),
    LatentClass("principal_component", principal_component, NOTE, _pc_phrase),
    LatentClass("token_set", token_set, NOTE, _token_phrase),
)  # fmt: skip
BY_NAME: dict[str, LatentClass] = {c.name: c for c in CLASSES}


def classify(evidence: Evidence) -> str | None:
    """The first class, in precedence, whose test holds; None when none does."""
    return next((c.name for c in CLASSES if c.test(evidence)), None)


def consequence(latent_class: str | None) -> str:
    """FIX for the mean direction and for an unclassified latent (today's prescriptions),
    else EXCLUDE or NOTE."""
    found = BY_NAME.get(latent_class) if latent_class is not None else None
    return FIX if found is None else found.consequence


def describe(latent_class: str, evidence: Evidence) -> str:
    """The evidence number that put the feature in `latent_class`, as a phrase."""
    return BY_NAME[latent_class].describe(evidence)


def dense_latent_entry(evidence: DenseLatentEvidence) -> dict[str, Any]:
    """The report's `dense_latents` entry, with its class decided."""
    return evidence.as_json(classify(evidence))
