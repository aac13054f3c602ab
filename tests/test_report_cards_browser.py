"""The feature browser in a real headless Chromium: clicking an always-on feature id opens its
card with its contexts visible, the address's hash opens a card on load and on change, the
search box filters by id and by token; no console errors, no network requests."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import offline_chromium

from saedoctor.report.html import render_html
from test_report_cards import cards_document, visible

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
OPEN_CARDS = "() => [...document.querySelectorAll('details.card[open]')].map(d => d.id)"
SHOWN_ITEMS = (
    "i => [...document.querySelectorAll(`#cards-${i} li[data-card]`)]"
    ".filter(li => !li.hidden).map(li => Number(li.dataset.feature))"
)


def test_feature_browser_opens_cards_from_links_and_hash(tmp_path: Path) -> None:
    page_file = tmp_path / "report.html"
    page_file.write_text(render_html(cards_document()))
    with offline_chromium() as pages:
        page = pages.new_page()
        page.goto(page_file.as_uri(), wait_until="load")
        assert page.evaluate(OPEN_CARDS) == []  # collapsed by default
        card = page.locator("#card-0-290")
        assert not card.locator(".ctx").first.is_visible()

        # the always-on features row of the first SAE's metric table
        page.locator("#sae-0 .grid a.card-link[href='#card-0-290']").click()
        page.wait_for_function("() => document.getElementById('card-0-290').open")
        contexts = card.locator(".ctx")
        assert contexts.count() == 4  # 3 top + 1 random
        assert all(contexts.nth(i).is_visible() for i in range(4))
        assert card.locator(".tok.focus").first.is_visible()
        in_view = page.evaluate(
            "() => { const r = document.getElementById('card-0-290')"
            ".getBoundingClientRect(); return r.top >= -1 && r.top < innerHeight; }"
        )
        assert in_view
        ARTIFACTS.mkdir(exist_ok=True)
        card.screenshot(path=str(ARTIFACTS / "feature-card-screenshot.png"))

        # a neighbour link inside a card opens that card too
        page.locator("#card-0-290 .neighbours a[href='#card-0-7']").click()
        page.wait_for_function("() => document.getElementById('card-0-7').open")

        # a hash change (typed address, back button) opens the card it names
        page.evaluate("() => { location.hash = '#card-1-134'; }")
        page.wait_for_function("() => document.getElementById('card-1-134').open")

        # search: by feature id prefix, by a token of the contexts, nothing
        box = page.locator("#cards-0 .card-search")
        box.fill("29")
        assert page.evaluate(SHOWN_ITEMS, 0) == [290, 294]
        assert not page.locator("#card-0-7").is_visible()
        box.fill("Cherry")  # only card 290's random context has " cherry"
        assert page.evaluate(SHOWN_ITEMS, 0) == [290]
        assert page.locator("#card-0-290").is_visible()
        box.fill("␣damson")  # the visible space glyph stands for a space
        assert page.evaluate(SHOWN_ITEMS, 0) == [294]
        box.fill("<eos")  # a logit-lens token (every card of the entry has it)
        assert page.evaluate(SHOWN_ITEMS, 0) == [7, 41, 290, 294]
        box.fill("no such token")
        assert page.evaluate(SHOWN_ITEMS, 0) == []
        assert page.locator("#cards-0 .card-count").inner_text() == "0 of 4 shown"
        box.fill("")
        assert page.evaluate(SHOWN_ITEMS, 0) == [7, 41, 290, 294]
        assert page.evaluate(SHOWN_ITEMS, 1) == [12, 134, 294]  # the other entry untouched

        # loading with a hash opens that card
        fresh = pages.new_page()
        fresh.goto(page_file.as_uri() + "#card-1-294", wait_until="load")
        fresh.wait_for_function("() => document.getElementById('card-1-294').open")
        assert fresh.evaluate(OPEN_CARDS) == ["card-1-294"]


# Every token span of one opened card: its text, hover title, class and computed background.
CARD_TOKENS = """id => [...document.querySelectorAll(`#${id} .tok`)].map(s => ({
    text: s.textContent, title: s.title, cls: s.className,
    background: getComputedStyle(s).backgroundColor, children: s.children.length}))"""


def test_opened_cards_draw_every_token_as_text_shaded_by_activation(tmp_path: Path) -> None:
    """The strips are built from the page's JSON when a card opens: every token of every
    window, in order, as text (markup tokens stay text), titled with its activation, the
    focus token outlined and shaded in full at the card's peak."""
    document = cards_document()
    page_file = tmp_path / "report.html"
    page_file.write_text(render_html(document))
    with offline_chromium() as pages:
        page = pages.new_page()
        page.goto(page_file.as_uri(), wait_until="load")
        for index, entry in enumerate(document["saes"]):
            for card in entry["cards"]["features"]:
                anchor = f"card-{index}-{card['feature']}"
                assert page.evaluate(CARD_TOKENS, anchor) == []  # nothing built until opened
                page.locator(f"#{anchor} > summary").click()  # the toggle event builds it
                page.wait_for_function(  # the toggle event fires just after the card opens
                    "id => document.querySelector(`#${id} .ctx`)", arg=anchor
                )
                spans = page.evaluate(CARD_TOKENS, anchor)
                contexts = card["top_contexts"] + card["random_contexts"]
                assert [s["text"] for s in spans] == [visible(t) for c in contexts
                                                      for t in c["tokens"]]  # fmt: skip
                acts = [a for c in contexts for a in c["activations"]]
                titles = [float(s["title"].removeprefix("activation ")) for s in spans]
                assert titles == pytest.approx(acts, rel=1e-3, abs=1e-9)
                assert all(s["children"] == 0 for s in spans)  # "<b>" is text, not an element
                starts = [sum(len(c["tokens"]) for c in contexts[:k])
                          for k in range(len(contexts))]  # fmt: skip
                focus = [i for i, s in enumerate(spans) if "focus" in s["cls"]]
                assert focus == [s + c["focus"] for s, c in zip(starts, contexts, strict=True)]
                peak = max(acts)
                for span, act in zip(spans, acts, strict=True):
                    if act == 0:
                        assert span["background"] == "rgba(0, 0, 0, 0)"  # no shade at all
                    else:
                        r, g, b, *alpha = map(float, re.findall(r"[\d.]+", span["background"]))
                        assert (r, g, b) == (230, 97, 0)
                        alpha = alpha[0] if alpha else 1.0  # rgb(...) when fully opaque
                        assert alpha == pytest.approx(act / peak, abs=0.006)
                assert page.locator(f"#{anchor} .ctx").count() == len(contexts)
                page.locator(f"#{anchor} > summary").click()  # closing and reopening
                page.locator(f"#{anchor} > summary").click()  # does not build twice
                assert len(page.evaluate(CARD_TOKENS, anchor)) == len(spans)


def click_a_card_open(page_file: Path) -> str:
    """Open a report in Chromium, click a feature id (in the always-on row when the report
    has one, else in the feature browser's list), and check the card it opens shows its
    contexts; no console errors, no network. Returns the card's id."""
    with offline_chromium() as pages:
        page = pages.new_page()
        page.goto(page_file.as_uri(), wait_until="load")
        always_on = page.locator(".grid a.card-link")
        link = always_on.first if always_on.count() else page.locator(
            "li[data-card] a").first  # fmt: skip
        target = link.get_attribute("href").lstrip("#")
        link.click()
        page.wait_for_function("id => document.getElementById(id).open", arg=target)
        contexts = page.locator(f"#{target} .ctx")
        assert contexts.count() > 0 and contexts.first.is_visible()
        assert page.locator(f"#{target} .tok").count() > contexts.count()
    return target
