"""The live health monitor: window metrics, warnings the moment things go wrong, loggers."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

from saedoctor.errors import InputError
from saedoctor.sae.codes import Codes
from saedoctor.train.monitor import HealthMonitor, JsonlLogger, TensorBoardLogger, WandbLogger


class Recorder:
    def __init__(self) -> None:
        self.logged: list[tuple[int, dict]] = []

    def log(self, metrics, step):
        self.logged.append((step, metrics))

    def close(self):
        pass


def _feed(monitor: HealthMonitor, n: int, features: list[int], d_in: int = 4) -> None:
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, d_in, generator=g)
    idx = torch.tensor(features).repeat(n, 1)
    codes = Codes(torch.ones(n, len(features)), idx, 8)
    monitor.update("sae", x, x * 0.9, codes, {"mse": 0.1})


def _monitor(tmp_path: Path, recorder: Recorder) -> tuple[HealthMonitor, io.StringIO]:
    text = io.StringIO()
    console = Console(file=text, width=200, color_system=None)
    loggers = [recorder, JsonlLogger(tmp_path / "metrics.jsonl")]
    return HealthMonitor({"sae": (4, 8)}, 1, console=console, loggers=loggers), text


def test_warns_when_a_feature_turns_always_on_and_when_dead_crosses_the_band(tmp_path):
    recorder = Recorder()
    monitor, text = _monitor(tmp_path, recorder)
    _feed(monitor, 1000, [3, 1])
    (row,) = monitor.report(step=1, tokens=1000, lrs={"sae": 1e-3})
    assert row["always_on_features"] == [1, 3] and row["always_on_count"] == 2
    assert row["l0"] == 2 and row["variance_explained"] > 0.9
    assert not row["dead_measurable"]  # 1000 tokens cannot tell dead from rare
    assert "[1, 3] turned always-on" in text.getvalue()
    assert "dead" not in " ".join(monitor.warnings)
    # the same features again: no new warning; a new one: warned the moment it appears
    _feed(monitor, 1000, [3, 1])
    monitor.report(step=2, tokens=2000, lrs={})
    assert len(monitor.warnings) == 1
    _feed(monitor, 50_000, [3, 1, 5])
    (row,) = monitor.report(step=3, tokens=52_000, lrs={})
    assert "[5] turned always-on" in monitor.warnings[-2]
    # 5 of 8 latents never fire over 50k tokens: 62.5% dead, the critical band
    assert row["dead_measurable"] and row["dead_pct"] == pytest.approx(62.5)
    assert "crossed into the critical band" in monitor.warnings[-1]
    # loggers got the same keys; the JSONL file holds one line per report
    step, flat = recorder.logged[-1]
    assert step == 3
    assert {"sae/always_on_count", "sae/dead_pct", "sae/l0", "sae/variance_explained",
            "sae/loss/mse", "tokens"} <= set(flat)  # fmt: skip
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["sae/lr"] == 1e-3


def test_live_table_shows_each_sae_and_state_round_trips(tmp_path):
    monitor, _ = _monitor(tmp_path, Recorder())
    _feed(monitor, 500, [2])
    monitor.report(step=4, tokens=500, lrs={})
    _feed(monitor, 300, [2, 6])  # an open window, saved in the checkpoint
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(monitor.table())
    assert "sae" in out.getvalue() and "[2]" in out.getvalue()
    again, _ = _monitor(tmp_path, Recorder())
    again.load_state_dict(monitor.state_dict())
    assert again.history == monitor.history and again.warnings == monitor.warnings
    assert again.windows["sae"].micro == 1
    assert torch.equal(again.windows["sae"].features.fire_count,
                       monitor.windows["sae"].features.fire_count)  # fmt: skip


def test_optional_loggers_are_import_guarded(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(InputError, match="wandb package is not installed"):
        WandbLogger("p", "n", {}, None, tmp_path)
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(InputError, match="tensorboard package is not installed"):
            TensorBoardLogger(tmp_path)
    else:
        logger = TensorBoardLogger(tmp_path / "tb")
        logger.log({"sae/l0": 3.0}, 1)
        logger.close()
        assert any((tmp_path / "tb").iterdir())
