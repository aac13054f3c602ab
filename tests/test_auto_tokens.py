"""`--tokens auto`: the pass stops once more tokens could not change any graded status, says
why in the report, and is refused where it cannot work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import random_sae, saved_sae
from typer.testing import CliRunner

from conftest import TINY_TEXT
from saedoctor.cli import app
from saedoctor.diagnose.auto_tokens import AutoStop
from saedoctor.health import load_policy
from saedoctor.report.schema import validate_report
from saedoctor.sae.site import Site


@pytest.fixture()
def long_corpus(tmp_path: Path) -> Path:
    path = tmp_path / "long.jsonl"
    rows = [{"text": f"{t} Document {i} talks about item {i * 7 % 13} and {i * 3 % 17}."}
            for i, t in enumerate(TINY_TEXT * 300)]  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_auto_stops_once_every_status_is_settled(tiny_llama_dir, long_corpus, tmp_path) -> None:
    sae = saved_sae(tmp_path / "s", random_sae(64, 128, site=Site(1)))
    out = tmp_path / "run.json"
    result = CliRunner().invoke(app, [
        "diagnose", "--model", str(tiny_llama_dir), "--corpus", str(long_corpus),
        "--sae", str(sae), "--tokens", "auto", "--auto-max-tokens", "400000",
        "--context", "32", "--preflight", "none", "--no-downstream",
        "--out", str(out)])  # fmt: skip
    assert result.exit_code in (0, 1), result.output
    document = json.loads(out.read_text())
    validate_report(document, str(out))
    auto = document["run"]["tokens_auto"]
    assert auto["reason"] == "every graded status settled"
    assert document["run"]["tokens_counted"] == auto["tokens_counted"] < 400_000
    assert auto["checks"][-1]["unsettled"] == []
    assert "tokens: auto (cap 400,000): every graded status settled" in result.output


class _Unit:
    name = "u"


def test_a_metric_is_settled_inside_one_band_or_when_narrow() -> None:
    rule = AutoStop(load_policy(), [_Unit()], width=0.02, cap=10, downstream_budget=None)
    # Invented intervals against the default bands (L0 healthy from 20).
    assert rule._settled("l0", 60.0, [55.0, 65.0])  # one status throughout
    assert not rule._settled("l0", 21.0, [18.0, 24.0])  # reaches the band below 20
    assert rule._settled("l0", 20.1, [19.9, 20.3])  # straddles, but 2 % wide: settled


@pytest.mark.parametrize("args, message", [
    (["--tokens", "lots"], "--tokens 'lots': expected a positive integer or auto"),
    (["--tokens", "auto", "--activations", "a.safetensors"], "not with --activations"),
    (["--tokens", "auto", "--auto-width", "2"], "--auto-width"),
])  # fmt: skip
def test_bad_token_options_are_one_line_exit_2(args, message, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["diagnose", *args, "--out", "run.json"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "run.json").exists()
