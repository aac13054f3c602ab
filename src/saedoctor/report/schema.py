"""Checking a report against `data/report.schema.json` before anything renders it."""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from saedoctor.errors import InputError
from saedoctor.metrics.registry import METRICS

_JSON_TYPES = {
    dict: "object", list: "array", str: "string", bool: "boolean",
    int: "integer", float: "number", type(None): "null",
}


@lru_cache(maxsize=1)
def report_validator() -> Draft202012Validator:
    """Built once: the schema ships as package data, so it cannot change under us."""
    text = resources.files("saedoctor").joinpath("data/report.schema.json").read_text()
    schema = json.loads(text)
    # A registered metric's property is the registry's (tests/test_metric_registry.py keeps
    # the shipped file equal to it, for readers of the schema).
    schema["$defs"]["metrics"]["properties"].update(registry_metric_properties())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def registry_metric_properties() -> dict[str, Any]:
    """The JSON Schema property of every registered metric."""
    return {m.key: m.schema() for m in METRICS}


def validate_report(document: Any, source: str) -> None:
    """Raise InputError naming `source`, the JSON path and what was expected, in one line."""
    error = best_match(report_validator().iter_errors(document))
    if error is not None:
        raise InputError(f"{source}: invalid report at {error.json_path}: {expectation(error)}")


def expectation(error: ValidationError) -> str:
    """A short 'expected X, got Y': jsonschema's own message can quote a whole SAE entry."""
    want, got = error.validator_value, error.instance
    if error.validator == "type":
        types = [want] if isinstance(want, str) else list(want)
        return f"expected {' or '.join(types)}, got {json_type(got)} {short(got)}"
    if error.validator == "required" and isinstance(got, dict):
        missing = [key for key in want if key not in got]
        return f"missing required key(s) {', '.join(repr(k) for k in missing)}"
    if error.validator == "const":
        return f"expected {json.dumps(want)}, got {short(got)}"
    if error.validator == "enum":
        return f"expected one of {', '.join(json.dumps(v) for v in want)}, got {short(got)}"
    return short(error.message, 160)


def json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) and limit > 60 else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"
