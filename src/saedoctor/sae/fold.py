"""Fold features out of a dictionary: each one's mean contribution moves into `b_dec` and
the feature is removed (it never fires and writes nothing), so an always-on feature leaves
a circuit graph without its average output landing in the error term."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch

from saedoctor.errors import InputError
from saedoctor.sae.model import Dictionary

# A removed feature's pre-activation: below every activation's firing point (relu, topk's
# relu, jumprelu's non-negative thresholds), whatever the input, since its encoder column is 0.
NEVER_FIRES = -1.0


@torch.no_grad()
def fold_features(dictionary: Dictionary, mean_activation: Mapping[int, float],
                  source: str = "dictionary") -> Dictionary:  # fmt: skip
    """A copy of `dictionary` with each feature `f` of `mean_activation` folded: `b_dec +=
    E[a_f] · W_dec[f]` (`E[a_f]` over all counted tokens, zeros included), then `W_enc[:, f]`,
    `W_dec[f]` zeroed and `b_enc[f]` set so it never fires."""
    if dictionary.architecture.name == "gated":
        raise InputError(f"{source}: gated dictionaries cannot be folded (their gate has its own "
                         "bias); expected relu, topk, batchtopk or jumprelu")  # fmt: skip
    d_sae = dictionary.cfg.d_sae
    bad = [f for f in mean_activation if not 0 <= f < d_sae]
    if bad:
        raise InputError(f"{source}: feature id(s) {bad} out of range 0..{d_sae - 1}")
    out = copy.deepcopy(dictionary)
    for feature, mean in mean_activation.items():
        out.b_dec += float(mean) * out.W_dec[feature]
        out.W_enc[:, feature] = 0
        out.W_dec[feature] = 0
        out.b_enc[feature] = NEVER_FIRES
    out.cfg = copy.deepcopy(dictionary.cfg)
    out.cfg.metadata["folded_features"] = {str(f): float(m) for f, m in mean_activation.items()}
    return out
