"""A report's views, written or printed by the commands that have one."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_views(document: dict[str, Any], md: Path | None, html: Path | None) -> None:
    """Markdown and / or HTML, each written atomically."""
    from saedoctor.atomic import atomic_write_bytes
    from saedoctor.report.render import render

    if md is not None:
        atomic_write_bytes(md, render(document, "md").encode())
    if html is not None:
        atomic_write_bytes(html, render(document, "html").encode())


def print_terminal(document: dict[str, Any]) -> None:
    from saedoctor.report.terminal import print_report

    print_report(document)
