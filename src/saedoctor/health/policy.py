"""The grading policy: SPEC §3 bands as data, loaded from TOML and merged with user overrides."""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from saedoctor.errors import InputError
from saedoctor.health.intervals import Interval, IntervalError, parse_interval
from saedoctor.metrics.registry import GRADED

# Ordered best to worst: the order is what "worst" and "best" resolution compare.
STATUSES: tuple[str, ...] = ("excellent", "good", "warning", "critical")
HEALTHY: tuple[str, ...] = ("excellent", "good")
PROBLEMS: tuple[str, ...] = ("warning", "critical")
NOT_MEASURED = "not measured"

GRADED_METRICS: tuple[str, ...] = GRADED  # declared once, in metrics/registry.py
RESOLUTIONS: tuple[str, ...] = ("worst", "best")
TOP_LEVEL_KEYS: tuple[str, ...] = ("resolution", "fallback")
METRIC_OPTIONS: tuple[str, ...] = ("fallback_source",)
DEFAULT_NAME = "default"


@dataclass(frozen=True)
class MetricPolicy:
    """The bands of one graded metric; `fallback_source` is graded when the metric is missing."""

    metric: str
    bands: dict[str, tuple[Interval, ...]]
    fallback_source: str | None = None


@dataclass(frozen=True)
class Policy:
    name: str
    resolution: str
    fallback: str
    metrics: dict[str, MetricPolicy]

    def bands(self) -> dict[str, dict[str, list[str]]]:
        """The bands as the user wrote them, for the report's `run.policy.bands`."""
        return {
            metric: {status: [i.text for i in mp.bands[status]] for status in STATUSES}
            for metric, mp in self.metrics.items()
        }

    def intervals(self) -> dict[str, dict[str, list[list[float | None]]]]:
        """The bands as [low, high] pairs (null = unbounded) for plots; open/closed ends and the
        overlap resolution are not in this form: statuses always come from the grader."""
        return {
            metric: {status: [i.pair() for i in mp.bands[status]] for status in STATUSES}
            for metric, mp in self.metrics.items()
        }

    def describe(self) -> dict[str, Any]:
        """The report's `run.policy` block."""
        sources = {m: mp.fallback_source for m, mp in self.metrics.items() if mp.fallback_source}
        return {
            "name": self.name,
            "bands": self.bands(),
            "intervals": self.intervals(),
            "resolution": self.resolution,
            "fallback": self.fallback,
            "fallback_sources": sources,
        }


def load_policy(path: str | Path | None = None) -> Policy:
    """The bundled policy, or the bundled one with a user TOML file merged over it."""
    default = _read_toml(resources.files("saedoctor") / "data" / "policy.toml", "policy.toml")
    if path is None:
        return build_policy(default, DEFAULT_NAME, "bundled policy.toml")
    label = str(path)
    user = _read_toml(Path(path), label)
    _check_keys(user, label)
    return build_policy(merge(default, user), label, label)


def _read_toml(source: Any, label: str) -> dict[str, Any]:
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{label}: cannot read policy file ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{label}: not UTF-8 text (byte {exc.start}); expected TOML") from exc
    try:
        return tomllib.loads(text)
    # tomllib recurses per nesting level: `a = [[[[...` thousands deep exhausts the stack.
    except (tomllib.TOMLDecodeError, RecursionError) as exc:
        raise InputError(f"{label}: not valid TOML ({exc})") from exc


def merge(default: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
    """User keys replace default keys one level down: a file may change a single status."""
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in default.items()}
    for key, value in user.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key].update(value)
        else:
            merged[key] = value
    return merged


def _suggest(key: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _check_keys(raw: dict[str, Any], label: str) -> None:
    """Reject typos before merging, so a misspelt table does not silently keep the default."""
    for key, value in raw.items():
        if key in TOP_LEVEL_KEYS:
            continue
        if key not in GRADED_METRICS:
            raise InputError(
                f"{label}: unknown metric [{key}]{_suggest(key, GRADED_METRICS + TOP_LEVEL_KEYS)}"
                f" (graded metrics: {', '.join(GRADED_METRICS)})"
            )
        if not isinstance(value, dict):
            raise InputError(f"{label}: [{key}] must be a table of statuses, got {value!r}")
        for status in value:
            if status not in STATUSES + METRIC_OPTIONS:
                raise InputError(
                    f"{label}: {key}.{status} is not a status{_suggest(status, STATUSES)}"
                    f" (statuses: {', '.join(STATUSES)})"
                )


def build_policy(raw: dict[str, Any], name: str, label: str) -> Policy:
    """Validate a merged policy table and turn it into a Policy."""
    _check_keys(raw, label)
    resolution = raw.get("resolution", "worst")
    if resolution not in RESOLUTIONS:
        raise InputError(
            f"{label}: resolution = {resolution!r}; expected one of {', '.join(RESOLUTIONS)}"
        )
    fallback = raw.get("fallback", "warning")
    if fallback not in STATUSES:
        raise InputError(f"{label}: fallback = {fallback!r}; expected one of {', '.join(STATUSES)}")
    metrics = {m: _metric_policy(m, raw.get(m, {}), label) for m in GRADED_METRICS}
    return Policy(name=name, resolution=resolution, fallback=fallback, metrics=metrics)


def _metric_policy(metric: str, table: dict[str, Any], label: str) -> MetricPolicy:
    bands = {status: _band(metric, status, table.get(status, []), label) for status in STATUSES}
    source = table.get("fallback_source")
    if source is not None and not isinstance(source, str):
        raise InputError(f"{label}: {metric}.fallback_source must be a metric name, got {source!r}")
    return MetricPolicy(metric, bands, source or None)


def _band(metric: str, status: str, value: Any, label: str) -> tuple[Interval, ...]:
    key = f"{metric}.{status}"
    if not isinstance(value, list):
        raise InputError(f"{label}: {key} must be a list of interval strings, got {value!r}")
    intervals = []
    for item in value:
        if not isinstance(item, str):
            raise InputError(f"{label}: {key} holds {item!r}; intervals are strings like '<= 20'")
        try:
            intervals.append(parse_interval(item))
        except IntervalError as exc:
            raise InputError(f"{label}: {key}: {exc}") from exc
    return tuple(intervals)
