"""The report's feature cards of one SAE (docs/report.md, `cards`), from what the main pass
collected (metrics/cards.py): which features get one, their contexts as text, the logit lens
of their decoder rows and their nearest decoder neighbours."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from saedoctor.activations.unembed import Unembedding
from saedoctor.diagnose.options import DiagnoseOptions
from saedoctor.diagnose.units import SAEUnderTest
from saedoctor.metrics.cards import Context, FeatureCards
from saedoctor.metrics.dense_latents import UnembeddingGram
from saedoctor.metrics.intervals import density_bounds
from saedoctor.thresholds import DEAD_DENSITY, DENSE_DENSITY

LENS_TOKENS = 10  # promoted and suppressed tokens shown per card
NEIGHBOURS = 5  # nearest decoder rows shown per card
# Always-on and dense features each get a card, but a dictionary with thousands of them would
# make a report nobody can open: the densest this many are kept (the method says so).
MAX_FLAGGED_CARDS = 256
# Features whose density interval straddles a threshold: the closest this many (a short run
# can leave hundreds near the dead threshold).
MAX_UNCERTAIN_CARDS = 32
SIGNIFICANT = 5  # digits kept of a window's activations: the report stays small


@dataclass(frozen=True)
class CardText:
    """What turns collected cards into text: the tokenizer, and the model's unembedding
    (activations/unembed.py; None when the model has no head we recognise)."""

    tokenizer: Any
    unembedding: Unembedding | None

    @cached_property
    def unembedding_gram(self) -> UnembeddingGram | None:
        """For the null space of the dense-latent taxonomy: computed once, on first need."""
        u = self.unembedding
        return None if u is None else UnembeddingGram(u.gram(), min(u.d_model, u.vocab))


@dataclass(frozen=True)
class CardChoice:
    """Which features get a card and why (a feature may have several reasons)."""

    why: dict[int, list[str]]
    flagged_left_out: int  # always-on / dense features beyond MAX_FLAGGED_CARDS


def choose_features(density: torch.Tensor, always_on: float, uncertain: list[int],
                    opts: DiagnoseOptions) -> CardChoice:  # fmt: skip
    """Always-on, dense (densest first, capped), uncertain, requested, and a seeded sample of
    `opts.cards` alive features among the rest."""
    why: dict[int, list[str]] = {}
    flagged = (density > DENSE_DENSITY).nonzero().flatten()
    flagged = flagged[torch.argsort(density[flagged], descending=True, stable=True)]
    for f in flagged[:MAX_FLAGGED_CARDS].tolist():
        why[f] = ["always_on" if density[f] > always_on else "dense"]
    for f in [f for f in uncertain if density[f] > 0][:MAX_UNCERTAIN_CARDS]:
        why.setdefault(f, []).append("uncertain")
    for f in opts.card_features:
        if f < density.numel():
            why.setdefault(f, []).append("requested")
    alive = ((density >= DEAD_DENSITY) & (density <= DENSE_DENSITY)).nonzero().flatten()
    alive = alive[[f not in why for f in alive.tolist()]] if why else alive
    g = torch.Generator().manual_seed(opts.seed)
    for f in sorted(alive[torch.randperm(alive.numel(), generator=g)[: opts.cards]].tolist()):
        why[f] = ["sample"]
    left_out = max(0, flagged.numel() - MAX_FLAGGED_CARDS)
    return CardChoice(dict(sorted(why.items())), left_out)


class TokenText:
    """Token ids as the text each stands for, decoded once per id."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer, self.cache = tokenizer, {}

    def __call__(self, token: int) -> str:
        if token not in self.cache:
            self.cache[token] = self.tokenizer.decode([token])
        return self.cache[token]


def context_json(c: Context, text: TokenText) -> dict[str, Any]:
    return {"sequence": c.sequence, "position": c.position, "activation": c.activation,
            "tokens": [text(t) for t in c.token_ids],
            "activations": [float(f"{a:.{SIGNIFICANT}g}") for a in c.activations],
            "focus": c.focus}  # fmt: skip


def logit_lens(W_dec: torch.Tensor, lens: Unembedding | None, features: list[int],
               text: TokenText) -> dict[int, dict[str, list]]:  # fmt: skip
    """Per feature: the tokens its decoder row promotes and suppresses most."""
    if lens is None or W_dec.shape[1] != lens.d_model or not features:
        return {}
    logits = lens.logits(W_dec[features])
    logits -= logits.mean(dim=1, keepdim=True)  # TransformerLens' center_unembed
    k = min(LENS_TOKENS, logits.shape[1])
    top, bottom = logits.topk(k, dim=1), logits.topk(k, dim=1, largest=False)

    def listed(found: Any, i: int) -> list[list]:
        pairs = zip(found.values[i].tolist(), found.indices[i].tolist(), strict=True)
        return [[text(t), v] for v, t in pairs]

    return {f: {"top": listed(top, i), "bottom": listed(bottom, i)}
            for i, f in enumerate(features)}  # fmt: skip


def neighbours(W_dec: torch.Tensor, features: list[int]) -> dict[int, list[dict[str, Any]]]:
    """Per feature: the decoder rows nearest its own by cosine (its absorption partner first)."""
    if not features or W_dec.shape[0] < 2:
        return {}
    unit_rows = torch.nn.functional.normalize(W_dec.detach().float().cpu(), dim=1)
    cos = unit_rows[features] @ unit_rows.T
    cos[torch.arange(len(features)), torch.tensor(features)] = -float("inf")
    best = cos.topk(min(NEIGHBOURS, W_dec.shape[0] - 1), dim=1)
    return {f: [{"feature": int(j), "cosine": float(c)} for c, j in
                zip(best.values[i], best.indices[i], strict=True)]
            for i, f in enumerate(features)}  # fmt: skip


def cards_entry(unit: SAEUnderTest, density: list[float], mean_activation: list[float],
                uncertain: dict[str, Any] | None, source: CardText | None,
                opts: DiagnoseOptions) -> dict[str, Any] | None:  # fmt: skip
    """The entry's `cards`, or None when none were collected (cards off, or no text)."""
    cards: FeatureCards | None = unit.suite.cards
    if cards is None or source is None or int(cards.fires.sum()) == 0:
        return None
    dens = torch.tensor(density, dtype=torch.float64)
    unsure = [*(uncertain or {}).get("always_on", []), *(uncertain or {}).get("dead", [])]
    choice = choose_features(dens, unit.suite.features.always_on_threshold, unsure, opts)
    features = list(choice.why)
    blocked = unit.suite.blocked
    bounds = density_bounds(blocked, blocked.tokens > 0) if int((blocked.tokens > 0).sum()) > 1 \
        else None
    text = TokenText(source.tokenizer)
    W_dec = unit.sae.W_dec
    lenses = logit_lens(W_dec, source.unembedding, features, text)
    near = neighbours(W_dec, features)
    contexts = cards.contexts(features)
    out = []
    for f in features:
        edges, counts = trimmed(*cards.histogram(f))
        out.append({
            "feature": f, "why": choice.why[f], "density": density[f],
            "density_interval": None if bounds is None else bounds[f].tolist(),
            "mean_activation": mean_activation[f],
            "top_contexts": [context_json(c, text) for c in contexts[f].top],
            "random_contexts": [context_json(c, text) for c in contexts[f].random],
            "histogram": {"edges": edges, "counts": counts},
            "logit_lens": lenses.get(f), "neighbours": near.get(f, []), "class": None,
        })  # fmt: skip
    return {"method": card_method(cards, opts, choice), "features": out}


def card_method(cards: FeatureCards, opts: DiagnoseOptions, choice: CardChoice) -> dict[str, Any]:
    return {"top": cards.top, "random": cards.random, "window": [cards.before, cards.after],
            "sample": opts.cards, "seed": opts.seed,
            "histogram": "activation > 0 in log10 bins (raw edges)",
            "random_method": "bottom-k sketch of a hash of (sequence, position, feature): a "
            "uniform sample of the feature's firings",
            "logit_lens": "decoder row · W_U, final norm weight folded in, centred over the "
            "vocabulary", "neighbours": "cosine of decoder rows",
            "flagged_left_out": choice.flagged_left_out}  # fmt: skip


def trimmed(edges: list[float], counts: list[int]) -> tuple[list[float], list[int]]:
    """The histogram from its first to its last non-empty bin."""
    filled = [i for i, c in enumerate(counts) if c]
    if not filled:
        return edges[:1], []
    first, last = filled[0], filled[-1]
    return edges[first : last + 2], counts[first : last + 1]
