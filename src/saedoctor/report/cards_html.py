"""The HTML feature browser: per SAE entry a searchable list of its card features and one
collapsed card per feature (id `card-I-F`), plus links to those cards from every place the
page names a feature id. Plain HTML, CSS and a little inline JavaScript; nothing fetched.

A card's context windows are most of its weight (about 15 windows of 16 tokens each), so they
travel as one compact JSON block per entry — a table of the entry's distinct tokens and, per
card, rows of token indices and activations — and the script builds a card's token strips the
first time it opens. Token strings are arbitrary text: the JSON has every `<` escaped so the
block cannot end early, and the script writes tokens with `textContent`, never as markup.
Whitespace or control characters are drawn as visible glyphs (␣, ↵, …) so a token is never
invisible.
"""

from __future__ import annotations

import json
import math
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

# Opens the card a link or the address names (on load and on every hash change), builds a
# card's context strips from its entry's JSON the first time it opens, and filters the list by
# feature id or by a token of the card's contexts or logit lens.
SCRIPT = """
(function(){
  function data(section){
    if(!section._data){
      section._data=JSON.parse(section.querySelector('script.card-data').textContent);
    }
    return section._data;
  }
  function el(tag, cls, text){
    var e=document.createElement(tag);
    if(cls) e.className=cls;
    if(text!==undefined) e.textContent=text;
    return e;
  }
  function strip(row, peak, tokens){
    var out=el('span','strip');
    row[4].forEach(function(t, i){
      var a=row[5][i], span=el('span', i===row[3]?'tok focus':'tok', tokens[t]);
      var alpha=(a!==null && peak>0)?Math.min(1, Math.max(0, a/peak)):0;
      if(alpha>0) span.style.background='rgba(SHADE,'+alpha.toFixed(2)+')';
      span.title='activation '+(a===null?'n/a':a);
      out.appendChild(span);
    });
    return out;
  }
  function fill(box, rows, peak, tokens){
    if(!rows.length){ box.appendChild(el('p','note','none recorded')); return; }
    rows.forEach(function(row){
      var line=el('div','ctx');
      line.appendChild(el('span','ctx-act',row[0]));
      line.appendChild(el('span','ctx-where','seq '+row[1]+' \\u00b7 pos '+row[2]));
      line.appendChild(strip(row, peak, tokens));
      box.appendChild(line);
    });
  }
  function build(card){
    if(card._built) return;
    card._built=true;
    var d=data(card.closest('.cards')), c=d.cards[card.dataset.feature];
    card.querySelectorAll('.ctxs').forEach(function(box){
      fill(box, c[box.dataset.part], c.peak, d.tokens);
    });
  }
  function show(id){
    if(!/^card-[0-9]+-[0-9]+$/.test(id)) return;
    var card=document.getElementById(id);
    if(!card) return;
    build(card);
    card.hidden=false; card.open=true;
    document.querySelectorAll('.card-target').forEach(function(c){
      c.classList.remove('card-target');
    });
    card.classList.add('card-target');
    card.scrollIntoView({block:'start'});
  }
  function fromHash(){ show(decodeURIComponent(location.hash.slice(1))); }
  window.addEventListener('hashchange', fromHash);
  document.addEventListener('toggle', function(e){
    if(e.target.matches && e.target.matches('details.card') && e.target.open) build(e.target);
  }, true);
  document.addEventListener('click', function(e){
    var a=e.target.closest && e.target.closest('a[href^="#card-"]');
    if(a) show(a.getAttribute('href').slice(1));
  });
  function searchTokens(li){
    if(!li._tokens){
      var d=data(li.closest('.cards')), c=d.cards[li.dataset.feature], seen={};
      c.top.concat(c.random).forEach(function(row){
        row[4].forEach(function(t){ seen[t]=1; });
      });
      c.lens.forEach(function(t){ seen[t]=1; });
      li._tokens=Object.keys(seen).map(function(t){ return d.tokens[t].toLowerCase(); });
    }
    return li._tokens;
  }
  function matches(li, raw){
    var id=raw.trim();
    if(/^[0-9]+$/.test(id) && li.dataset.feature.indexOf(id)===0) return true;
    var q=raw.toLowerCase(), shown=q.replace(/ /g,'\\u2423').replace(/\\n/g,'\\u21b5');
    var t=q.trim();
    return searchTokens(li).some(function(s){
      return s.indexOf(shown)>=0 || (t && s.indexOf(t)>=0);
    });
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
""".replace("SHADE", ",".join(str(c) for c in SHADE))


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
        f'<ul class="card-list">{items}</ul>'
        '<noscript><p class="note">the context windows need JavaScript</p></noscript>'
        f'{bodies}<script type="application/json" class="card-data">{cards_json(cards)}</script>'
        "</div>"
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
    return (
        f'<li data-card="{anchor}" data-feature="{card.feature}">'
        f"{card_link(cards, card.feature)}{tags(cards, card)}</li>"
    )


def card_html(cards: EntryCards, card: Card) -> str:
    facts = [f"density {density_text(card)}", f"mean activation {compact(card.mean_activation)}"]
    cls = class_text(cards, card)
    if cls:
        facts.append(f"class {cls}")
    return (
        f'<details class="card" id="{cards.anchor(card.feature)}" data-feature="{card.feature}">'
        f"<summary>feature {card.feature} {tags(cards, card)} "
        f'<span class="note">{escape(density_text(card))}</span></summary>'
        f'<p class="meta">{escape(" · ".join(facts))}</p>'
        '<h5>Top contexts</h5><div class="ctxs" data-part="top"></div>'
        '<h5>Random contexts</h5><div class="ctxs" data-part="random"></div>'
        f"<h5>Activation histogram</h5>{histogram_svg(card.histogram)}"
        f"<h5>Logit lens</h5>{lens_html(card)}"
        f"<h5>Nearest decoder neighbours</h5>{neighbours_html(cards, card)}"
        "</details>"
    )


# --- the contexts as JSON ----------------------------------------------------------------
class TokenTable:
    """The entry's distinct visible token strings; contexts refer to them by index."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}

    def __call__(self, token: str) -> int:
        return self.index.setdefault(visible_token(token), len(self.index))

    def tokens(self) -> list[str]:
        return list(self.index)


def cards_json(cards: EntryCards) -> str:
    """`{"tokens": [...], "cards": {F: {"peak", "top", "random", "lens"}}}`: each context a
    row `[activation text, sequence, position, focus, token indices, activations]`, shading
    relative to the card's `peak`; `lens` holds the logit-lens tokens the search matches."""
    table = TokenTable()
    by_feature = {str(card.feature): card_json(card, table) for card in cards.cards}
    text = json.dumps(
        {"tokens": table.tokens(), "cards": by_feature}, ensure_ascii=False, separators=(",", ":")
    )
    return text.replace("<", "\\u003c")  # no "</script>" or "<!--" can end the block early


def card_json(card: Card, table: TokenTable) -> dict:
    return {
        "peak": short(card.peak()),
        "top": [context_row(c, table) for c in card.top_contexts],
        "random": [context_row(c, table) for c in card.random_contexts],
        "lens": [table(t) for t, _ in card.logit_top + card.logit_bottom],
    }


def context_row(context: Context, table: TokenTable) -> list:
    return [
        compact(context.activation),
        context.sequence,
        context.position,
        context.focus,
        [table(t) for t in context.tokens],
        [short(a) for a in context.activations],
    ]


def short(value: float) -> float | int | None:
    """Four significant digits (what a token's hover shows), an integer when whole; None for
    a non-finite value, which JSON cannot hold."""
    if not math.isfinite(value):
        return None
    rounded = float(f"{value:.4g}")
    return int(rounded) if rounded.is_integer() else rounded


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
