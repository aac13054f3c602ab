"""Explanations of always-on features (SPEC §2, last paragraph).

The main pass cannot know in advance which features will turn out always-on, so the
strongest / weakest tokens come from a short second look (`FeatureExtremes`) at the first
batches of the same corpus, restricted to those few features.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from saedoctor.sae.codes import Codes

BIAS_COSINE = 0.9
ANTIPODAL_COSINE = -0.9


def feature_columns(codes: Codes, features: torch.Tensor) -> torch.Tensor:
    """`[n, len(features)]` activations of the chosen features (zeros where they did not fire)."""
    if codes.indices is None:
        return codes.values[:, features]
    hit = codes.indices[:, :, None] == features[None, None, :]
    return (codes.values[:, :, None] * hit).sum(1)


@dataclass
class FeatureExtremes:
    """Top-m strongest and weakest activations (with token positions) of a few features."""

    features: list[int]
    m: int = 5
    best: list[list[tuple[float, int]]] = field(default_factory=list)
    worst: list[list[tuple[float, int]]] = field(default_factory=list)
    seen: int = 0

    def __post_init__(self) -> None:
        self.best = [[] for _ in self.features]
        self.worst = [[] for _ in self.features]

    @torch.no_grad()
    def update(self, codes: Codes) -> None:
        ids = torch.tensor(self.features, dtype=torch.long, device=codes.values.device)
        cols = feature_columns(codes, ids).double().cpu()
        k = min(self.m, cols.shape[0])
        for j in range(len(self.features)):
            top = cols[:, j].topk(k)
            low = cols[:, j].topk(k, largest=False)
            self.best[j] = _keep(self.best[j], top, self.seen, self.m, reverse=True)
            self.worst[j] = _keep(self.worst[j], low, self.seen, self.m, reverse=False)
        self.seen += cols.shape[0]


def _keep(held: list, found: Any, offset: int, m: int, reverse: bool) -> list:
    new = [(float(v), offset + int(i)) for v, i in zip(found.values, found.indices, strict=True)]
    # Ties keep the earliest token so the explanation is deterministic.
    ordered = sorted(held + new, key=lambda t: ((-t[0] if reverse else t[0]), t[1]))
    return ordered[:m]


def antipodal_partner(W_enc: torch.Tensor, feature: int) -> dict[str, Any] | None:
    """The feature whose encoder direction is most opposite, if its cosine is below -0.9."""
    enc = W_enc.detach().double()
    col = enc[:, feature]
    cos = (col @ enc) / (col.norm() * enc.norm(dim=0)).clamp_min(1e-12)
    cos[feature] = float("inf")
    j = int(cos.argmin())
    if float(cos[j]) >= ANTIPODAL_COSINE:
        return None
    return {"feature": j, "encoder_cos": float(cos[j])}


def explain_feature(
    feature: int,
    *,
    density: float,
    mean_activation: float,
    act_sq_sum: float,
    xhat_sq_sum: float,
    W_enc: torch.Tensor,
    W_dec: torch.Tensor,
    mean_x: torch.Tensor,
) -> dict[str, Any]:
    d = W_dec[feature].detach().double().cpu()
    mean_x = mean_x.double().cpu()
    cos_mean = float(d @ mean_x / (d.norm() * mean_x.norm()).clamp_min(1e-12))
    share = act_sq_sum * float(d @ d) / xhat_sq_sum if xhat_sq_sum > 0 else None
    return {
        "feature": feature,
        "density": density,
        "mean_activation": mean_activation,
        "decoder_cos_with_mean": cos_mean,
        "is_bias_direction": cos_mean > BIAS_COSINE,
        "reconstruction_share": share,
        "antipodal_partner": antipodal_partner(W_enc, feature),
        "strongest_tokens": [],
        "weakest_tokens": [],
    }


def attach_tokens(
    explanation: dict[str, Any],
    extremes: FeatureExtremes,
    j: int,
    describe: Callable[[int], dict[str, Any]],
) -> None:
    """Fill strongest/weakest tokens; `describe(position)` gives the token and its context."""
    explanation["strongest_tokens"] = [
        {**describe(pos), "activation": v} for v, pos in extremes.best[j]
    ]
    explanation["weakest_tokens"] = [
        {**describe(pos), "activation": v} for v, pos in extremes.worst[j]
    ]
    explanation["tokens_examined"] = extremes.seen
