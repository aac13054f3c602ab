"""An SAE entry's feature cards and dense latents as typed, plain data, read once from the
report JSON so the HTML, terminal and Markdown views draw the same thing.

The report is the contract (cards_design.md): a card holds the feature's density, its top and
random context windows, an activation histogram, the logit lens and its nearest decoder
neighbours. Readers here are lenient about optional parts (a null logit lens, no interval), so
a report from an SAE without a language model still renders.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from saedoctor.errors import InputError
from saedoctor.report.fields import format_value, sae_label
from saedoctor.report.sections import Cell, Table, percent

# Each dense-latent class and the one evidence number that earned it (health decides the class;
# these say which measurement to show beside it).
CLASS_EVIDENCE: dict[str, tuple[str, str]] = {
    "first_token": ("first_token_share", "first-token share"),
    "position": ("position_corr", "position corr."),
    "antipodal_pair": ("antipodal_cosine", "antipodal cos."),
    "null_space": ("null_space_share", "null-space share"),
    "mean_direction": ("mean_cosine", "cos with mean"),
    "principal_component": ("pc_cosine", "PC cos."),
    "token_set": ("token_top5_share", "top-5 token share"),
}
IDS_LISTED = 12  # feature ids named in one error line before "… (+n)"
# Whitespace and control characters drawn visibly: a token " " or "\n" must not vanish.
VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍", "\x7f": "␡"}


@dataclass(frozen=True)
class Context:
    """A window of counted tokens around one firing (`focus` indexes the firing token)."""

    sequence: int
    position: int
    activation: float
    tokens: tuple[str, ...]
    activations: tuple[float, ...]
    focus: int | None  # None when the report's index falls outside the window


@dataclass(frozen=True)
class Histogram:
    edges: tuple[float, ...]  # len(edges) == len(counts) + 1
    counts: tuple[int, ...]
    log10: bool  # edges are log10(activation), not activations


@dataclass(frozen=True)
class Neighbour:
    feature: int
    cosine: float | None


@dataclass(frozen=True)
class Card:
    feature: int
    why: tuple[str, ...]
    density: float | None
    density_interval: tuple[float, float] | None
    mean_activation: float | None
    top_contexts: tuple[Context, ...]
    random_contexts: tuple[Context, ...]
    histogram: Histogram | None
    logit_top: tuple[tuple[str, float], ...]
    logit_bottom: tuple[tuple[str, float], ...]
    has_logit_lens: bool
    neighbours: tuple[Neighbour, ...]
    cls: str | None

    def contexts(self) -> tuple[Context, ...]:
        return self.top_contexts + self.random_contexts

    def peak(self) -> float:
        """The largest activation in any window: token shading is relative to it."""
        values = [a for c in self.contexts() for a in c.activations if math.isfinite(a)]
        return max([*values, 0.0])

    def search_tokens(self) -> list[str]:
        """Every token a search may match: the contexts' and the logit lens's."""
        tokens = [t for c in self.contexts() for t in c.tokens]
        return tokens + [t for t, _ in self.logit_top + self.logit_bottom]


@dataclass(frozen=True)
class DenseLatent:
    feature: int
    density: float | None
    cls: str | None
    evidence: dict[str, Any]


@dataclass(frozen=True)
class EntryCards:
    """One SAE entry's cards; `index` is the entry's place in the report (anchors use it)."""

    index: int
    name: str
    method: dict[str, Any]
    cards: tuple[Card, ...]
    dense: tuple[DenseLatent, ...]

    def card(self, feature: int) -> Card | None:
        return next((c for c in self.cards if c.feature == feature), None)

    def anchor(self, feature: int) -> str | None:
        """`card-I-F` when feature F has a card, else None (nothing to link to)."""
        return card_anchor(self.index, feature) if self.card(feature) is not None else None


def card_anchor(index: int, feature: int) -> str:
    return f"card-{index}-{feature}"


def entry_cards(entry: dict[str, Any], index: int) -> EntryCards:
    block = entry.get("cards") or {}
    cards = sorted((read_card(c) for c in block.get("features") or []), key=lambda c: c.feature)
    dense = tuple(read_dense(d) for d in entry.get("dense_latents") or [])
    return EntryCards(
        index, entry.get("name", "?"), dict(block.get("method") or {}), tuple(cards), dense
    )


def read_card(raw: dict[str, Any]) -> Card:
    lens = raw.get("logit_lens")
    interval = raw.get("density_interval")
    return Card(
        feature=int(raw["feature"]),
        why=tuple(str(w) for w in raw.get("why") or []),
        density=number(raw.get("density")),
        density_interval=(float(interval[0]), float(interval[1]))
        if isinstance(interval, list) and len(interval) == 2
        else None,
        mean_activation=number(raw.get("mean_activation")),
        top_contexts=tuple(read_context(c) for c in raw.get("top_contexts") or []),
        random_contexts=tuple(read_context(c) for c in raw.get("random_contexts") or []),
        histogram=read_histogram(raw.get("histogram")),
        logit_top=pairs((lens or {}).get("top")),
        logit_bottom=pairs((lens or {}).get("bottom")),
        has_logit_lens=lens is not None,
        neighbours=tuple(
            Neighbour(int(n["feature"]), number(n.get("cosine")))
            for n in raw.get("neighbours") or []
        ),
        cls=raw.get("class"),
    )


def read_context(raw: dict[str, Any]) -> Context:
    tokens = tuple(str(t) for t in raw.get("tokens") or [])
    activations = tuple(number(a) or 0.0 for a in raw.get("activations") or [])
    activations = (activations + (0.0,) * len(tokens))[: len(tokens)]  # one per token
    focus = raw.get("focus")
    return Context(
        int(raw.get("sequence", -1)),
        int(raw.get("position", -1)),
        number(raw.get("activation")) or 0.0,
        tokens,
        activations,
        focus if isinstance(focus, int) and 0 <= focus < len(tokens) else None,
    )


def read_histogram(raw: dict[str, Any] | None) -> Histogram | None:
    if not raw or len(raw.get("edges") or []) != len(raw.get("counts") or []) + 1:
        return None
    edges = tuple(float(e) for e in raw["edges"])
    # Raw activation edges are all > 0 (log-spaced from 1e-4); log10 edges start negative.
    log10 = raw.get("scale") == "log10" or edges[0] < 0
    return Histogram(edges, tuple(int(c) for c in raw["counts"]), log10)


def read_dense(raw: dict[str, Any]) -> DenseLatent:
    return DenseLatent(
        int(raw["feature"]),
        number(raw.get("density")),
        raw.get("class"),
        dict(raw.get("evidence") or {}),
    )


def number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def pairs(raw: Any) -> tuple[tuple[str, float], ...]:
    return tuple(
        (str(p[0]), number(p[1]) or 0.0)
        for p in raw or []
        if isinstance(p, list | tuple) and len(p) == 2
    )


# --- text shared by the views --------------------------------------------------------------
def visible_token(token: str) -> str:
    """Whitespace and control characters as visible glyphs; '' as '∅'."""
    if token == "":
        return "∅"
    return "".join(
        VISIBLE.get(ch) or (chr(0x2400 + ord(ch)) if ord(ch) < 0x20 else ch) for ch in token
    )


def compact(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def density_text(card: Card) -> str:
    """'93.00% (91.00–95.00%)'."""
    text = percent(card.density)
    if card.density_interval:
        low, high = card.density_interval
        text += f" ({100 * low:.2f}–{100 * high:.2f}%)"
    return text


def evidence_text(dense: DenseLatent) -> str:
    """The class's own evidence number ('position corr. 0.97'), '' when unclassified."""
    label = CLASS_EVIDENCE.get(dense.cls or "")
    if label is None:
        return ""
    key, name = label
    text = f"{name} {format_value(number(dense.evidence.get(key)), 'f2')}"
    if dense.cls == "antipodal_pair" and dense.evidence.get("antipodal_partner") is not None:
        text += f" with {dense.evidence['antipodal_partner']}"
    if dense.cls == "principal_component" and dense.evidence.get("pc_index") is not None:
        text += f" (PC {dense.evidence['pc_index']})"
    return text


def class_text(cards: EntryCards, card: Card) -> str:
    """'position (position corr. 0.97)', 'unclassified', or '' when not a dense latent."""
    dense = next((d for d in cards.dense if d.feature == card.feature), None)
    if card.cls is None and dense is None:
        return ""
    if dense is None or dense.cls != card.cls:
        return card.cls or "unclassified"
    evidence = evidence_text(dense)
    return f"{card.cls or 'unclassified'}" + (f" ({evidence})" if evidence else "")


def dense_table(cards: EntryCards) -> Table | None:
    """Every always-on or dense feature: density, class and the class's evidence number."""
    if not cards.dense:
        return None
    table = Table(
        ["feature", "density", "class", "evidence"],
        note="class: the first test that fits, in the order first token, position, "
        "antipodal pair, null space, mean direction, principal component, "
        "token set",
    )
    for d in sorted(cards.dense, key=lambda d: d.feature):
        partner = d.evidence.get("antipodal_partner") if d.cls == "antipodal_pair" else None
        table.rows.append(
            [
                Cell(str(d.feature), ids=(d.feature,)),
                Cell(percent(d.density)),
                Cell(d.cls or "unclassified"),
                Cell(evidence_text(d), ids=(partner,) if isinstance(partner, int) else ()),
            ]
        )
    return table


def context_text(
    context: Context, focus: Callable[[str], str], token: Callable[[str], str] = lambda t: t
) -> str:
    """The window as one string: each token through `token`, the focus one through `focus`."""
    return "".join(
        focus(t) if i == context.focus else token(t) for i, t in enumerate(context.tokens)
    )


# --- choosing cards for `saedoctor report --feature` ------------------------------------
def select_entries(document: dict[str, Any], sae: str | None, source: str) -> list[int]:
    """Entry indices `--sae` names: an index, an exact name, or a name's prefix; all if None."""
    names = [e.get("name", "") for e in document["saes"]]
    if sae is None:
        return list(range(len(names)))
    if sae.isdigit() and int(sae) < len(names):
        return [int(sae)]
    hits = [i for i, name in enumerate(names) if name == sae or name.startswith(sae)]
    if not hits:
        raise InputError(f"--sae {sae!r}: not in {source} (SAEs: {', '.join(names)})")
    return hits


def find_cards(
    document: dict[str, Any], feature: int, sae: str | None, source: str
) -> list[tuple[EntryCards, Card]]:
    """The card of `feature` in each chosen entry that has one; InputError when none does."""
    chosen = [entry_cards(document["saes"][i], i) for i in select_entries(document, sae, source)]
    found = [(cards, card) for cards in chosen if (card := cards.card(feature)) is not None]
    if not found:
        have = "; ".join(
            f"SAE {c.index} {sae_label({'name': c.name})}: "
            f"{format_value([k.feature for k in c.cards], 'ids', IDS_LISTED)}"
            for c in chosen
        )
        raise InputError(
            f"{source}: no card for feature {feature} (features with cards: "
            f"{have or 'no SAE chosen'})"
        )
    return found
