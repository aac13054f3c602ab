"""`saedoctor compare`: several reports' SAEs side by side, the guide's layer-by-layer table and
its model-vs-model comparison with a verdict per model, built (report/comparison.py) and drawn
(report/compare_render.py)."""

from __future__ import annotations

from typing import Any

from saedoctor.report.comparison import COMPARE_SCHEMA, compare_reports

__all__ = [
    "COMPARE_SCHEMA",
    "compare_reports",
    "render_compare_html",
    "render_compare_markdown",
    "render_compare_terminal",
]


# The renderers load rich and plotly; `compare --json` needs neither, so they load on first use.
def render_compare_terminal(comparison: dict[str, Any], console: Any = None) -> None:
    from saedoctor.report.compare_render import compare_terminal

    compare_terminal(comparison, console)


def render_compare_markdown(comparison: dict[str, Any]) -> str:
    from saedoctor.report.compare_render import compare_markdown

    return compare_markdown(comparison)


def render_compare_html(comparison: dict[str, Any]) -> str:
    from saedoctor.report.compare_render import compare_html

    return compare_html(comparison)
