"""The HTML report in a real headless Chromium: every plot draws, no console errors, and the
page fetches nothing from the network (it must open offline)."""

from __future__ import annotations

from pathlib import Path

from helpers import offline_chromium

from saedoctor.report.html import render_html
from test_report_data import llama_sweep

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def test_html_report_renders_offline_in_chromium(tmp_path: Path) -> None:
    document = llama_sweep()
    page_file = tmp_path / "report.html"
    page_file.write_text(render_html(document))
    expected_plots = 2 * len(document["saes"]) + 1  # bands + density per SAE, one sweep chart

    with offline_chromium() as pages:
        page = pages.new_page()
        page.goto(page_file.as_uri(), wait_until="load")
        page.wait_for_function(
            "n => document.querySelectorAll('.sd-plot .main-svg').length >= n",
            arg=expected_plots, timeout=30_000)  # fmt: skip
        plots = page.locator(".sd-plot")
        drawn = page.evaluate(
            "() => [...document.querySelectorAll('.sd-plot')]"
            ".map(d => d.querySelector('.main-svg') !== null)")  # fmt: skip
        kinds = page.evaluate(
            "() => [...document.querySelectorAll('.sd-plot')].map(d => d.dataset.plot)")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "report-screenshot.png"), full_page=True)
        assert plots.count() == expected_plots
    blank = [kind for kind, ok in zip(kinds, drawn, strict=True) if not ok]
    assert not blank, f"plots without an svg: {blank}"
    assert len(set(kinds)) == expected_plots  # stable, unique ids
