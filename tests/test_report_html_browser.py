"""The HTML report in a real headless Chromium: every plot draws, no console errors, and the
page fetches nothing from the network (it must open offline)."""

from __future__ import annotations

from pathlib import Path

from helpers import require_chromium, require_module

from saedoctor.report.html import render_html
from test_report_data import llama_sweep

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_html_report_renders_offline_in_chromium(tmp_path: Path) -> None:
    chromium = require_chromium()
    sync_api = require_module("playwright.sync_api")
    document = llama_sweep()
    page_file = tmp_path / "report.html"
    page_file.write_text(render_html(document))
    expected_plots = 2 * len(document["saes"]) + 1  # bands + density per SAE, one sweep chart

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
            page.wait_for_function(
                "n => document.querySelectorAll('.sd-plot .main-svg').length >= n",
                arg=expected_plots, timeout=30_000)
            plots = page.locator(".sd-plot")
            drawn = page.evaluate(
                "() => [...document.querySelectorAll('.sd-plot')]"
                ".map(d => d.querySelector('.main-svg') !== null)")
            kinds = page.evaluate(
                "() => [...document.querySelectorAll('.sd-plot')].map(d => d.dataset.plot)")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "report-screenshot.png"), full_page=True)
            assert plots.count() == expected_plots
        finally:
            browser.close()
    blank = [kind for kind, ok in zip(kinds, drawn, strict=True) if not ok]
    assert not blank, f"plots without an svg: {blank}"
    assert len(set(kinds)) == expected_plots  # stable, unique ids
    assert not errors, f"console errors: {errors}"
    assert not network, f"the page tried to fetch: {network}"
