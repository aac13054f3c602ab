"""The HTML feature browser: per SAE entry a searchable list of its card features and one
collapsed card per feature (id `card-I-F`), plus links to those cards from every place the
page names a feature id. Plain HTML, CSS and a little inline JavaScript; nothing fetched.

Token strings are arbitrary text: every one goes through `html.escape`, and whitespace or
control characters are drawn as visible glyphs (␣, ↵, …) so a token is never invisible.
"""

from __future__ import annotations

import json
import re
from html import escape

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

SHADE = (230, 97, 0)  # token background colour; its opacity follows the activation
HIST_WIDTH, HIST_HEIGHT = 360, 70  # px of the inline SVG activation histogram
WHY_LABELS = {
    "always_on": "always-on",
    "dense": "dense",
    "uncertain": "uncertain",
    "sample": "sample",
}

CSS = """
.cards .card-search{font:inherit;padding:4px 8px;width:min(420px,100%);margin:4px 0 8px}
.card-list{list-style:none;padding:0;margin:0 0 10px;display:flex;flex-wrap:wrap;gap:4px 8px;
  font-size:13px}
.card-list li{border:1px solid #d0d7de;border-radius:4px;padding:1px 6px}
.tag{display:inline-block;background:#eaeef2;border-radius:3px;padding:0 4px;margin-left:3px;
  font-size:12px}
.tag-always_on{background:#f9dcdb}.tag-dense{background:#fdf0d2}.tag-uncertain{background:#d8f0f6}
.tag-class{background:#e6dcf5}
details.card{border:1px solid #d0d7de;border-radius:6px;margin:6px 0;padding:4px 12px}
details.card>summary{cursor:pointer;font-weight:600}
details.card:target,details.card.card-target{box-shadow:0 0 0 3px #1798b0}
.card h5{margin:10px 0 4px;font-size:14px}
.ctx{display:flex;gap:10px;align-items:baseline;margin:2px 0;font-size:13px}
.ctx-act{min-width:4.5em;text-align:right;font-variant-numeric:tabular-nums;font-weight:600}
.ctx-where{color:#57606a;min-width:9em;white-space:nowrap}
.strip{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;word-break:break-all}
.tok{border-radius:2px;padding:0 1px;margin-right:1px}
.tok.focus{outline:2px solid #1f2328}
.lens{display:flex;gap:24px;flex-wrap:wrap}.lens table td:first-child{font-weight:400}
.lens td.t{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.hist rect{fill:#4c78a8}.hist text{font-size:11px;fill:#57606a}
"""

# Opens the card a link or the address names (on load and on every hash change) and filters
# the list by feature id or by a token of the card's contexts or logit lens.
SCRIPT = """
(function(){
  function show(id){
    if(!/^card-[0-9]+-[0-9]+$/.test(id)) return;
    var card=document.getElementById(id);
    if(!card) return;
    card.hidden=false; card.open=true;
    document.querySelectorAll('.card-target').forEach(function(c){
      c.classList.remove('card-target');
    });
    card.classList.add('card-target');
    card.scrollIntoView({block:'start'});
  }
  function fromHash(){ show(decodeURIComponent(location.hash.slice(1))); }
  window.addEventListener('hashchange', fromHash);
  document.addEventListener('click', function(e){
    var a=e.target.closest && e.target.closest('a[href^="#card-"]');
    if(a) show(a.getAttribute('href').slice(1));
  });
  function matches(li, raw){
    var id=raw.trim();
    if(/^[0-9]+$/.test(id) && li.dataset.feature.indexOf(id)===0) return true;
    var q=raw.toLowerCase().replace(/\\u2423/g,' ').replace(/\\u21b5/g,'\\n');
    var t=q.trim();
    if(!li._tokens){
      li._tokens=JSON.parse(li.dataset.tokens).map(function(s){return s.toLowerCase()});
    }
    return li._tokens.some(function(s){return s.indexOf(q)>=0 || (t && s.indexOf(t)>=0)});
  }
  function filter(box){
    var section=box.closest('.cards'), shown=0, items=section.querySelectorAll('li[data-card]');
    items.forEach(function(li){
      var ok=box.value==='' || matches(li, box.value);
      li.hidden=!ok; shown+=ok?1:0;
      var card=document.getElementById(li.dataset.card);
      if(card) card.hidden=!ok;
    });
    section.querySelector('.card-count').textContent=shown+' of '+items.length+' shown';
  }
  document.querySelectorAll('.card-search').forEach(function(box){
    box.addEventListener('input', function(){ filter(box); });
  });
  if(document.readyState==='loading') document.addEventListener('DOMContentLoaded', fromHash);
  else fromHash();
})();
"""


# --- links to cards --------------------------------------------------------------------------
def card_link(cards: EntryCards | None, feature: int, text: str | None = None) -> str:
    """`<a href="#card-I-F">F</a>` when F has a card, else the id as plain text."""
    label = escape(text if text is not None else str(feature))
    anchor = cards.anchor(feature) if cards is not None else None
    return f'<a class="card-link" href="#{anchor}">{label}</a>' if anchor else label


def link_ids(escaped: str, ids: tuple[int, ...], cards: EntryCards | None) -> str:
    """Link each id the (already escaped) cell text names, left to right, once each. An id
    inside a number ('0' of '-0.95', '1' of '91.2%') is not that id."""
    if cards is None or not ids:
        return escaped
    out, at = [], 0
    for feature in ids:
        if cards.anchor(feature) is None:
            continue
        found = re.compile(rf"(?<![\w.\-]){feature}(?![\w.%])").search(escaped, at)
        if found is None:
            continue
        out += [escaped[at : found.start()], card_link(cards, feature)]
        at = found.end()
    return "".join(out) + escaped[at:]


MENTION = re.compile(r"\b(features?\s+)(\d+(?:(?:,\s*|\s+and\s+)\d+)*)\b", re.IGNORECASE)


def link_mentions(escaped: str, cards: EntryCards | None) -> str:
    """'feature 389 fires …', 'features 290, 294 and 134': each id with a card links to it."""
    if cards is None or not cards.cards:
        return escaped

    def ids(match: re.Match[str]) -> str:
        listed = re.sub(r"\d+", lambda m: card_link(cards, int(m.group())), match.group(2))
        return match.group(1) + listed

    return MENTION.sub(ids, escaped)


# --- the browser -------------------------------------------------------------------------
def browser_section(cards: EntryCards) -> str:
    """The search box, the list of card features and the collapsed cards of one entry."""
    if not cards.cards:
        return ""
    items = "".join(list_item(cards, card) for card in cards.cards)
    bodies = "".join(card_html(cards, card) for card in cards.cards)
    n = len(cards.cards)
    return (
        f'<div class="cards" id="cards-{cards.index}"><h3>Feature browser</h3>'
        f'<p class="note">{escape(method_text(cards.method))}</p>'
        f'<input type="search" class="card-search" placeholder="feature id or token" '
        f'aria-label="filter the cards of {escape(cards.name)}"> '
        f'<span class="card-count note">{n} of {n} shown</span>'
        f'<ul class="card-list">{items}</ul>{bodies}</div>'
    )


def method_text(method: dict) -> str:
    """How the cards were chosen, from the report's `cards.method` (any key may be missing)."""
    window = method.get("window") or []
    parts = [
        f"top {method['top']} contexts by activation" if "top" in method else "",
        f"{method['random']} random firing context{'' if method['random'] == 1 else 's'}"
        if "random" in method
        else "",
        f"window {window[0]} tokens before, {window[1]} after" if len(window) == 2 else "",
        f"{method['sample']} sampled features (seed {method.get('seed', '?')})"
        if "sample" in method
        else "",
        f"histogram: {method['histogram']}" if method.get("histogram") else "",
    ]
    return "cards: " + "; ".join(p for p in parts if p) if any(parts) else "cards"


def tags(cards: EntryCards, card: Card) -> str:
    out = "".join(
        f'<span class="tag tag-{escape(w)}">{escape(WHY_LABELS.get(w, w))}</span>' for w in card.why
    )
    cls = class_text(cards, card)
    return out + (f'<span class="tag tag-class">{escape(cls)}</span>' if cls else "")


def list_item(cards: EntryCards, card: Card) -> str:
    anchor = cards.anchor(card.feature)
    tokens = escape(json.dumps(card.search_tokens(), ensure_ascii=False), quote=True)
    return (
        f'<li data-card="{anchor}" data-feature="{card.feature}" data-tokens="{tokens}">'
        f"{card_link(cards, card.feature)}{tags(cards, card)}</li>"
    )


def card_html(cards: EntryCards, card: Card) -> str:
    peak = card.peak()
    facts = [f"density {density_text(card)}", f"mean activation {compact(card.mean_activation)}"]
    cls = class_text(cards, card)
    if cls:
        facts.append(f"class {cls}")
    return (
        f'<details class="card" id="{cards.anchor(card.feature)}">'
        f"<summary>feature {card.feature} {tags(cards, card)} "
        f'<span class="note">{escape(density_text(card))}</span></summary>'
        f'<p class="meta">{escape(" · ".join(facts))}</p>'
        f"<h5>Top contexts</h5>{contexts_html(card.top_contexts, peak)}"
        f"<h5>Random contexts</h5>{contexts_html(card.random_contexts, peak)}"
        f"<h5>Activation histogram</h5>{histogram_svg(card.histogram)}"
        f"<h5>Logit lens</h5>{lens_html(card)}"
        f"<h5>Nearest decoder neighbours</h5>{neighbours_html(cards, card)}"
        "</details>"
    )


def contexts_html(contexts: tuple[Context, ...], peak: float) -> str:
    if not contexts:
        return '<p class="note">none recorded</p>'
    return "".join(
        f'<div class="ctx"><span class="ctx-act">{escape(compact(c.activation))}</span>'
        f'<span class="ctx-where">seq {c.sequence} · pos {c.position}</span>'
        f'<span class="strip">{strip_html(c, peak)}</span></div>'
        for c in contexts
    )


def strip_html(context: Context, peak: float) -> str:
    """One span per token: background opacity = activation / the card's peak activation."""
    spans = []
    for i, (token, value) in enumerate(zip(context.tokens, context.activations, strict=True)):
        alpha = min(1.0, max(0.0, value / peak)) if peak > 0 else 0.0
        cls = "tok focus" if i == context.focus else "tok"
        r, g, b = SHADE
        spans.append(
            f'<span class="{cls}" style="background:rgba({r},{g},{b},{alpha:.2f})" '
            f'title="activation {value:.4g}">{escape(visible_token(token))}</span>'
        )
    return "".join(spans)


def histogram_svg(hist: Histogram | None) -> str:
    """Bars over the bins from the first to the last non-empty one (equal width: the bins are
    log-spaced), each titled with its range and count."""
    if hist is None or not any(hist.counts):
        return '<p class="note">no histogram</p>'
    used = [i for i, c in enumerate(hist.counts) if c]
    lo, hi = used[0], used[-1] + 1
    counts = hist.counts[lo:hi]
    width, top = HIST_WIDTH / len(counts), max(counts)
    bars = []
    for j, count in enumerate(counts):
        h = HIST_HEIGHT * count / top
        a, b = edge_text(hist, lo + j), edge_text(hist, lo + j + 1)
        bars.append(
            f'<rect x="{j * width:.1f}" y="{HIST_HEIGHT - h:.1f}" width="{max(width - 1, 1):.1f}"'
            f' height="{h:.1f}"><title>{escape(a)}–{escape(b)}: {count:,}</title></rect>'
        )
    label_y = HIST_HEIGHT + 13
    return (
        f'<svg class="hist" width="{HIST_WIDTH}" height="{label_y + 4}" role="img" '
        f'aria-label="activation histogram">{"".join(bars)}'
        f'<text x="0" y="{label_y}">{escape(edge_text(hist, lo))}</text>'
        f'<text x="{HIST_WIDTH}" y="{label_y}" text-anchor="end">'
        f"{escape(edge_text(hist, hi))}</text></svg>"
        f'<p class="note">activation, {sum(counts):,} firings (hover a bar for its count)</p>'
    )


def edge_text(hist: Histogram, i: int) -> str:
    edge = hist.edges[i]
    return f"{10**edge:.3g}" if hist.log10 else f"{edge:.3g}"


def lens_html(card: Card) -> str:
    if not card.has_logit_lens:
        return '<p class="note">not measured (no unembedding)</p>'
    return (
        f'<div class="lens">{lens_table("promotes", card.logit_top)}'
        f"{lens_table('suppresses', card.logit_bottom)}</div>"
    )


def lens_table(title: str, rows: tuple[tuple[str, float], ...]) -> str:
    body = "".join(
        f'<tr><td class="t">{escape(visible_token(t))}</td><td>{v:+.3g}</td></tr>' for t, v in rows
    )
    head = f"<thead><tr><th>{title}</th><th>logit</th></tr></thead>"
    return f"<table>{head}<tbody>{body}</tbody></table>"


def neighbours_html(cards: EntryCards, card: Card) -> str:
    if not card.neighbours:
        return '<p class="note">none</p>'
    items = "".join(
        f"<li>{card_link(cards, n.feature)} (cos {compact(n.cosine)})</li>" for n in card.neighbours
    )
    return f'<ul class="neighbours">{items}</ul>'
