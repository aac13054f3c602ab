"""Tests that need an optional tool skip without it, and fail under CI (`CI` set) instead."""

from __future__ import annotations

import json
from pathlib import Path

import helpers
import pytest
from helpers import require_chromium, require_module, skip_or_fail_in_ci

ABSENT = "saedoctor_absent_module_for_this_test"  # invented: no such module exists


@pytest.fixture(params=["1", "true"])
def ci(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", request.param)


@pytest.fixture(params=[None, ""])
def not_ci(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.param is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", request.param)


def test_missing_module_skips_outside_ci(not_ci) -> None:
    with pytest.raises(pytest.skip.Exception, match=f"{ABSENT} is not installed.*make setup"):
        require_module(ABSENT)


def test_missing_module_fails_under_ci(ci) -> None:
    with pytest.raises(pytest.fail.Exception, match=f"{ABSENT} is not installed.*make setup"):
        require_module(ABSENT)


def test_message_names_the_extra_that_installs_it(ci, monkeypatch) -> None:
    monkeypatch.setitem(helpers.PIP_EXTRAS, ABSENT, "peers")
    with pytest.raises(pytest.fail.Exception, match="the `peers` extra"):
        require_module(f"{ABSENT}.submodule")


def test_present_module_is_returned_either_way(ci) -> None:
    assert require_module("json") is json


def test_a_broken_install_is_an_error_not_a_skip(not_ci, tmp_path, monkeypatch) -> None:
    """Installed, but one of its own imports is missing: that is a fault to see."""
    (tmp_path / "saedoctor_broken_pkg.py").write_text(f"import {ABSENT}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match=ABSENT):
        require_module("saedoctor_broken_pkg")


def test_skip_or_fail_carries_the_message(monkeypatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="^no widget$"):
        skip_or_fail_in_ci("no widget")
    monkeypatch.setenv("CI", "yes")
    with pytest.raises(pytest.fail.Exception, match="^no widget .CI is set"):
        skip_or_fail_in_ci("no widget")


def _path_with(tmp_path: Path, names: list[str], monkeypatch) -> None:
    """PATH holding only fake executables called `names`."""
    for name in names:
        exe = tmp_path / name
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))


@pytest.mark.parametrize("name", ["chromium", "chromium-browser"])
def test_chromium_is_found_on_path(name, ci, tmp_path, monkeypatch) -> None:
    _path_with(tmp_path, [name], monkeypatch)
    assert require_chromium() == tmp_path / name


def test_no_chromium_skips_outside_ci(not_ci, tmp_path, monkeypatch) -> None:
    _path_with(tmp_path, [], monkeypatch)
    with pytest.raises(pytest.skip.Exception, match="chromium.*ensure-chromium.sh"):
        require_chromium()


def test_no_chromium_fails_under_ci(ci, tmp_path, monkeypatch) -> None:
    _path_with(tmp_path, [], monkeypatch)
    with pytest.raises(pytest.fail.Exception, match="chromium.*ensure-chromium.sh"):
        require_chromium()
