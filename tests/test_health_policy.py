"""The grading policy file: defaults, user overrides and one-line errors naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from saedoctor.errors import InputError
from saedoctor.health import grade_entry, load_policy
from saedoctor.health.intervals import IntervalError, parse_interval
from saedoctor.health.policy import GRADED_METRICS
from test_health_entries import make_entry


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "my-policy.toml"
    path.write_text(text, encoding="utf-8")
    return path


def dead_status(policy, value: float) -> str:
    return grade_entry(make_entry(dead_pct=value), policy)["statuses"]["dead_pct"]["status"]


def test_default_policy_is_spec_section_3() -> None:
    policy = load_policy()
    assert policy.name == "default"
    assert policy.resolution == "worst"
    assert policy.fallback == "warning"
    assert tuple(policy.metrics) == GRADED_METRICS
    bands = policy.bands()
    assert bands["always_on_count"] == {
        "excellent": ["== 0"],
        "good": ["1..2"],
        "warning": ["> 1"],
        "critical": ["> 2"],
    }
    assert bands["l0"]["warning"] == ["< 10", "> 300"]
    assert policy.metrics["loss_recovered"].fallback_source == "variance_explained"
    described = policy.describe()
    assert described["name"] == "default" and described["bands"] == bands
    assert described["intervals"]["l0"]["warning"] == [[None, 10.0], [300.0, None]]
    assert described["intervals"]["always_on_count"]["good"] == [[1.0, 2.0]]


def test_override_changes_one_band_and_keeps_the_rest(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, '[dead_pct]\nwarning = ["> 40"]\n'))
    assert policy.name == str(tmp_path / "my-policy.toml")
    assert dead_status(policy, 28.25) == "good"  # was warning under the default
    assert dead_status(policy, 45.0) == "warning"
    assert dead_status(policy, 78.26) == "critical"  # default critical kept
    assert policy.bands()["l0"] == load_policy().bands()["l0"]


def test_override_top_level_resolution(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, 'resolution = "best"\nfallback = "good"\n'))
    assert dead_status(policy, 28.25) == "good"  # best band holding 28.25
    l0 = grade_entry(make_entry(l0=15.0), policy)["statuses"]["l0"]["status"]
    assert l0 == "good"  # the gap now falls back to good


def test_empty_band_is_never_given(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, "[dead_pct]\nwarning = []\n"))
    assert dead_status(policy, 28.25) == "good"


def test_typo_metric_names_file_and_suggests(tmp_path: Path) -> None:
    path = write(tmp_path, '[dead_pcnt]\nwarning = ["> 40"]\n')
    with pytest.raises(InputError) as err:
        load_policy(path)
    message = str(err.value)
    assert str(path) in message and "dead_pcnt" in message and "'dead_pct'" in message
    assert "\n" not in message


def test_typo_status_suggests(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"l0\.warnin.*did you mean 'warning'"):
        load_policy(write(tmp_path, '[l0]\nwarnin = ["> 400"]\n'))


def test_impossible_band(tmp_path: Path) -> None:
    path = write(tmp_path, '[dead_pct]\nwarning = ["5..2"]\n')
    with pytest.raises(InputError, match=r"dead_pct\.warning.*impossible band '5\.\.2'") as err:
        load_policy(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("bad", ["~5", "5", "> x", "1...2", "=< 3", ""])
def test_unparsable_interval(tmp_path: Path, bad: str) -> None:
    with pytest.raises(InputError, match=r"absorption\.critical.*cannot parse"):
        load_policy(write(tmp_path, f'[absorption]\ncritical = ["{bad}"]\n'))


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ('[l0]\nwarning = "> 300"\n', r"l0\.warning must be a list"),
        ("[l0]\nwarning = [300]\n", r"l0\.warning holds 300"),
        ("l0 = 5\n", r"\[l0\] must be a table"),
        ('resolution = "median"\n', r"resolution = 'median'"),
        ('fallback = "bad"\n', r"fallback = 'bad'"),
        ("[loss_recovered]\nfallback_source = 3\n", r"loss_recovered\.fallback_source"),
        ("[l0\nwarning = 1\n", r"not valid TOML"),
        ('resolutoin = "best"\n', r"did you mean 'resolution'"),
    ],
)
def test_bad_values(tmp_path: Path, text: str, pattern: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(InputError, match=pattern) as err:
        load_policy(path)
    assert str(path) in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read policy file"):
        load_policy(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("text", "inside", "outside"),
    [
        ("< 5", [4.99, -1], [5, 6]),
        ("<= 5", [5], [5.01]),
        ("> 0.25", [0.2501], [0.25]),
        (">= 0.8", [0.8], [0.79]),
        ("== 0", [0], [0.001]),
        ("1..2", [1, 1.5, 2], [0.99, 2.01]),
        ("-1e-3..2.5E1", [0, 25], [26]),
    ],
)
def test_interval_syntax(text: str, inside: list[float], outside: list[float]) -> None:
    interval = parse_interval(text)
    assert all(interval.contains(x) for x in inside)
    assert not any(interval.contains(x) for x in outside)


def test_interval_error_type() -> None:
    with pytest.raises(IntervalError):
        parse_interval("3..1")
