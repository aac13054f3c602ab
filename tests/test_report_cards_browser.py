"""The feature browser in a real headless Chromium: clicking an always-on feature id opens its
card with its contexts visible, the address's hash opens a card on load and on change, the
search box filters by id and by token; no console errors, no network requests."""

from __future__ import annotations

from pathlib import Path

from helpers import require_chromium, require_module

from saedoctor.report.html import render_html
from test_report_cards import cards_document
from test_report_html_browser import ARGS

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
OPEN_CARDS = "() => [...document.querySelectorAll('details.card[open]')].map(d => d.id)"
SHOWN_ITEMS = (
    "i => [...document.querySelectorAll(`#cards-${i} li[data-card]`)]"
    ".filter(li => !li.hidden).map(li => Number(li.dataset.feature))"
)


def test_feature_browser_opens_cards_from_links_and_hash(tmp_path: Path) -> None:
    chromium = require_chromium()
    sync_api = require_module("playwright.sync_api")
    page_file = tmp_path / "report.html"
    page_file.write_text(render_html(cards_document()))

    errors: list[str] = []
    network: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))

            def route(r):  # anything but the file itself is a leak: block it and remember
                if r.request.url.startswith("file://"):
                    r.continue_()
                else:
                    network.append(r.request.url)
                    r.abort()

            page.route("**/*", route)
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
            fresh = browser.new_page(viewport={"width": 1280, "height": 900})
            fresh.on("pageerror", lambda e: errors.append(str(e)))
            fresh.route("**/*", route)
            fresh.goto(page_file.as_uri() + "#card-1-294", wait_until="load")
            fresh.wait_for_function("() => document.getElementById('card-1-294').open")
            assert fresh.evaluate(OPEN_CARDS) == ["card-1-294"]
        finally:
            browser.close()
    assert not errors, f"console errors: {errors}"
    assert not network, f"the page tried to fetch: {network}"
