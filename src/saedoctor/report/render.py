"""`saedoctor report run.json --md/--html/--terminal`: one entry point for every view."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Literal

from rich.console import Console

from saedoctor.atomic import atomic_write_bytes

Format = Literal["terminal", "md", "html"]
FORMATS: tuple[str, ...] = ("terminal", "md", "html")
SUFFIXES = {"md": ".md", "html": ".html", "terminal": ".txt"}


def render(document: dict[str, Any], fmt: Format, console: Console | None = None) -> str:
    """Markdown/HTML: the text. "terminal": prints to `console` (default: stdout, colours on a
    TTY) and returns what was printed as plain text when the console records."""
    if fmt == "md":
        from saedoctor.report.markdown import render_markdown

        return render_markdown(document)
    if fmt == "html":
        from saedoctor.report.html import render_html

        return render_html(document)
    if fmt == "terminal":
        from saedoctor.report.terminal import print_report

        console = console or Console(record=True)
        print_report(document, console)
        return console.export_text(clear=False) if console.record else ""
    raise ValueError(f"unknown report format {fmt!r} (expected one of {', '.join(FORMATS)})")


def terminal_text(document: dict[str, Any], width: int = 120) -> str:
    """The terminal view as plain text (no colour codes), e.g. for a file or a test."""
    console = Console(file=io.StringIO(), record=True, width=width, color_system=None)
    return render(document, "terminal", console)


def write_rendered(document: dict[str, Any], fmt: Format, path: str | Path) -> Path:
    """To a file, atomically (a half-written HTML page is worse than none)."""
    text = terminal_text(document) if fmt == "terminal" else render(document, fmt)
    return atomic_write_bytes(path, text.encode())
