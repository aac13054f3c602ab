"""Reading and writing the run report (`saedoctor.report/1`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from saedoctor.atomic import atomic_write_json
from saedoctor.errors import InputError

SCHEMA = "saedoctor.report/1"


def write_report(document: dict[str, Any], path: str | Path) -> Path:
    """Atomically: a crash or bad value never leaves a half-written report behind."""
    try:
        return atomic_write_json(path, document)
    except ValueError as err:  # NaN/Inf in a metric is a bug to surface, not to serialise
        raise InputError(f"{path}: report not written: {err}") from err


def read_report(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such report file")
    try:
        document = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a JSON report ({err})") from err
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        raise InputError(f'{path}: not a saedoctor report (expected "schema": "{SCHEMA}")')
    return document
