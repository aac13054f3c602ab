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
    """Read → check the schema id → validate, so renderers can trust every field they use."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such report file")
    try:
        document = json.loads(path.read_text())
    # ValueError also covers bad UTF-8 and integers past Python's digit limit; RecursionError
    # a document nested thousands deep.
    except (ValueError, RecursionError) as err:
        raise InputError(f"{path}: not a JSON report ({err})") from err
    check_schema_id(document, str(path))
    from saedoctor.report.schema import validate_report  # jsonschema loads only when reading

    validate_report(document, str(path))
    return document


def check_schema_id(document: Any, source: str) -> None:
    """A wrong id is reported as such, not as a cascade of field errors from another version."""
    if not isinstance(document, dict) or "schema" not in document:
        raise InputError(f'{source}: not a saedoctor report (expected "schema": "{SCHEMA}")')
    if document["schema"] != SCHEMA:
        raise InputError(
            f'{source}: report schema {json.dumps(document["schema"])} is not supported '
            f'(this saedoctor reads "{SCHEMA}")'
        )
