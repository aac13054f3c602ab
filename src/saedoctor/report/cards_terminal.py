"""A feature card in the terminal (`saedoctor report run.json --feature F`): its density and
class, each context window with the focus token highlighted and the firing tokens' activations
written beside them, the activation histogram as a sparkline, the logit lens and neighbours."""

from __future__ import annotations

from rich.console import Console
from rich.rule import Rule
from rich.text import Text

from saedoctor.report.cards import (
    Card,
    Context,
    EntryCards,
    Histogram,
    class_text,
    compact,
    density_text,
    visible_token,
)
from saedoctor.report.fields import sae_label

SPARKS = "▁▂▃▄▅▆▇█"
FIRING = "on color(223)"  # a firing token's background; the focus token is reversed instead
LENS_SHOWN = 5  # logit-lens tokens per side


def print_card(cards: EntryCards, card: Card, console: Console) -> None:
    title = Text(f"feature {card.feature}", style="bold")
    title.append(f" · SAE {cards.index} {sae_label({'name': cards.name})}")
    console.print(Rule(title))
    facts = [f"why: {', '.join(card.why) or '–'}", f"density {density_text(card)}"]
    facts.append(f"mean activation {compact(card.mean_activation)}")
    cls = class_text(cards, card)
    if cls:
        facts.append(f"class {cls}")
    console.print(Text("   ".join(facts)))
    print_contexts("top contexts", card.top_contexts, console)
    print_contexts("random contexts", card.random_contexts, console)
    console.print(histogram_text(card.histogram))
    for line in lens_lines(card):
        console.print(line)
    neighbours = ", ".join(f"{n.feature} (cos {compact(n.cosine)})" for n in card.neighbours)
    console.print(Text(f"neighbours: {neighbours or 'none'}"))


def print_contexts(title: str, contexts: tuple[Context, ...], console: Console) -> None:
    console.print(Text(title, style="bold underline"))
    if not contexts:
        console.print(Text("  none recorded", style="italic"))
    for context in contexts:
        line = Text(f"{compact(context.activation):>8}  ", style="bold")
        line.append(f"seq {context.sequence}:{context.position}  ", style="dim")
        line.append_text(strip_text(context))
        console.print(line)


def strip_text(context: Context) -> Text:
    """Tokens separated by spaces (their own whitespace shown as ␣ / ↵); a firing token carries
    its activation after a colon; the focus token is [bracketed] and reversed."""
    out = Text()
    for i, (token, value) in enumerate(zip(context.tokens, context.activations, strict=True)):
        shown = visible_token(token) + (f":{compact(value)}" if value > 0 else "")
        if i:
            out.append(" ")
        if i == context.focus:
            out.append(f"[{shown}]", style="bold reverse")
        else:
            out.append(shown, style=FIRING if value > 0 else "")
    return out


def histogram_text(hist: Histogram | None) -> Text:
    """'histogram 0.01 ▁▃█▅▂ 12.6' over the bins from the first to the last non-empty one."""
    if hist is None or not any(hist.counts):
        return Text("histogram: none", style="dim")
    used = [i for i, c in enumerate(hist.counts) if c]
    counts = hist.counts[used[0] : used[-1] + 1]
    top = max(counts)
    bars = "".join(SPARKS[0] if not c else SPARKS[-(-c * 8 // top) - 1] for c in counts)
    low, high = edge(hist, used[0]), edge(hist, used[-1] + 1)
    return Text(f"histogram {low} {bars} {high}  (activation, {sum(counts):,} firings)")


def edge(hist: Histogram, i: int) -> str:
    return f"{10 ** hist.edges[i]:.3g}" if hist.log10 else f"{hist.edges[i]:.3g}"


def lens_lines(card: Card) -> list[Text]:
    if not card.has_logit_lens:
        return [Text("logit lens: not measured", style="dim")]
    out = []
    for label, rows in (("promotes", card.logit_top), ("suppresses", card.logit_bottom)):
        line = Text(f"{label}: ")
        for j, (token, value) in enumerate(rows[:LENS_SHOWN]):
            line.append(", " if j else "")
            line.append(visible_token(token), style="bold")
            line.append(f" {value:+.3g}")
        out.append(line)
    return out
