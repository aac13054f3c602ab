"""The report's `dense_latents` of one SAE: every always-on or dense feature with the numbers
of the dense-latent taxonomy (metrics/dense_latents.py) and its class (health/taxonomy.py)."""

from __future__ import annotations

from typing import Any

import torch

from saedoctor.diagnose.cards import CardText
from saedoctor.diagnose.units import SAEUnderTest
from saedoctor.health.taxonomy import dense_latent_entry
from saedoctor.metrics.dense_latents import FiringStats, dense_latent_evidence
from saedoctor.thresholds import DENSE_DENSITY

MIN_MOMENT_ROWS = 2  # a covariance needs two rows


def dense_latents_entry(
    unit: SAEUnderTest, density: list[float], card_text: CardText
) -> list[dict[str, Any]] | None:
    """None when no cards were collected (their sums are the evidence); else one record per
    feature denser than DENSE_DENSITY, densest first."""
    cards = unit.suite.cards
    if cards is None or int(cards.fires.sum()) == 0:
        return None
    dens = torch.tensor(density, dtype=torch.float64)
    ids = (dens > DENSE_DENSITY).nonzero().flatten()
    if not ids.numel():
        return []
    ids = ids[torch.argsort(dens[ids], descending=True, stable=True)]
    position = cards.position_stats()
    share, size = cards.token_concentration()
    firing = FiringStats(position.position_corr[ids], position.first_token_share[ids],
                         share[ids], size[ids])  # fmt: skip
    sae = unit.sae
    target_mean = unit.suite.reconstruction.mean.cpu()  # exact, over every counted row
    cov = cards.moments()[1] if int(cards.x_rows) >= MIN_MOMENT_ROWS else None
    evidence = dense_latent_evidence(
        ids, dens, firing, W_dec=sae.W_dec.detach().cpu(), target_mean=target_mean,
        W_enc=sae.W_enc.detach().cpu(), input_mean=None if sae.is_transcoder else target_mean,
        target_cov=cov, unembedding=card_text.unembedding_gram,
    )  # fmt: skip
    return [dense_latent_entry(e) for e in evidence]


def with_classes(cards: dict[str, Any] | None, dense: list[dict[str, Any]] | None) -> None:
    """Each card of a classified feature names its class."""
    if cards is None or not dense:
        return
    classes = {d["feature"]: d["class"] for d in dense}
    for card in cards["features"]:
        card["class"] = classes.get(card["feature"])
