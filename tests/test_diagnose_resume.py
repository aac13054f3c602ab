"""Interrupt and resume of `diagnose`: the resumed report equals an uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from helpers import random_sae, saved_sae
from typer.testing import CliRunner

from saedoctor.cli import app
from saedoctor.diagnose import DiagnoseOptions, diagnose
from saedoctor.diagnose_state import DiagnoseInterrupted, MainPassState, read_state
from saedoctor.errors import InputError
from saedoctor.sae.site import Site

BATCH_TOKENS = 4 * 32  # batch_size * context below


def _opts(model_dir: Path, corpus: Path, saes: list[Path], state: Path, **kw) -> DiagnoseOptions:
    base = dict(model=str(model_dir), saes=[str(p) for p in saes], corpus=str(corpus),
                tokens=1024, context=32, batch_size=4, quiet=True,
                state_file=str(state))  # fmt: skip
    base.update(kw)
    return DiagnoseOptions(**base)


@pytest.fixture()
def saes(tmp_path: Path) -> list[Path]:
    return [
        saved_sae(tmp_path / "a", random_sae(64, 256, site=Site(0), seed=1)),
        saved_sae(tmp_path / "b", random_sae(64, 128, architecture="relu", site=Site(2), seed=2)),
    ]


def _stop_after(monkeypatch, batches: int, how=None) -> None:
    """Ask the main pass to stop once `batches` batches are done, as Ctrl-C would."""
    original = MainPassState.after_batch

    def hooked(self, totals):
        if self.batches_done + 1 == batches:
            if how is None:
                self.stop_requested = True
            else:
                how(self)
        original(self, totals)

    monkeypatch.setattr(MainPassState, "after_batch", hooked)


def _assert_same_report(resumed: dict, fresh: dict) -> None:
    for key in ("tokens_processed", "tokens_counted", "sequences"):
        assert resumed["run"][key] == fresh["run"][key]
    for got, want in zip(resumed["saes"], fresh["saes"], strict=True):
        assert set(got["metrics"]) == set(want["metrics"])
        for key, value in want["metrics"].items():
            assert got["metrics"][key] == value, key  # exactly: ==, not approx
        assert got["feature_density"] == want["feature_density"]
        assert got["feature_mean_activation"] == want["feature_mean_activation"]
        assert got["density_histogram"] == want["density_histogram"]


@pytest.mark.parametrize("downstream", [True, False])
def test_resume_after_interrupt_equals_uninterrupted_run(
    tiny_llama_dir, text_corpus, saes, tmp_path, monkeypatch, one_thread, downstream
):
    state = tmp_path / "run.json.partial.safetensors"
    fresh = diagnose(_opts(tiny_llama_dir, text_corpus, saes, tmp_path / "ref.st",
                           downstream=downstream))  # fmt: skip
    assert "loss_recovered" in fresh["saes"][0]["metrics"] or not downstream

    with monkeypatch.context() as m:
        _stop_after(m, 3)
        with pytest.raises(DiagnoseInterrupted) as info:
            diagnose(_opts(tiny_llama_dir, text_corpus, saes, state, downstream=downstream))
    assert info.value.done == 3 * BATCH_TOKENS
    assert "--resume" in str(info.value) and str(state) in str(info.value)
    meta, _ = read_state(state)
    assert meta["batches_done"] == 3
    assert meta["totals"]["tokens_processed"] == 3 * BATCH_TOKENS

    resumed = diagnose(_opts(tiny_llama_dir, text_corpus, saes, state, downstream=downstream,
                             resume=True))  # fmt: skip
    _assert_same_report(resumed, fresh)
    assert resumed["run"]["tokens_processed"] == 1024
    assert not state.exists()  # finished: the state file is gone


def test_sigterm_saves_and_a_kill_loses_only_the_last_batches(
    tiny_llama_dir, text_corpus, saes, tmp_path, monkeypatch, one_thread
):
    fresh = diagnose(_opts(tiny_llama_dir, text_corpus, saes, tmp_path / "ref.st",
                           downstream=False))  # fmt: skip
    state = tmp_path / "s.partial.safetensors"

    # A real SIGTERM from outside, delivered during batch 2: the handler asks for a stop.
    with monkeypatch.context() as m:
        _stop_after(m, 2, how=lambda s: os.kill(os.getpid(), signal.SIGTERM))
        with pytest.raises(DiagnoseInterrupted):
            diagnose(_opts(tiny_llama_dir, text_corpus, saes, state, downstream=False))
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler removed again
    assert read_state(state)[0]["batches_done"] == 2

    # Resume, then crash hard at batch 6 (no handler runs, as with kill -9): the periodic
    # save (here after every batch) has kept batch 5.
    def crash(s):
        raise SystemExit("killed")

    with monkeypatch.context() as m:
        _stop_after(m, 6, how=crash)
        with pytest.raises(SystemExit):
            diagnose(_opts(tiny_llama_dir, text_corpus, saes, state, downstream=False,
                           resume=True, checkpoint_minutes=1e-9))  # fmt: skip
    assert read_state(state)[0]["batches_done"] == 5

    resumed = diagnose(_opts(tiny_llama_dir, text_corpus, saes, state, downstream=False,
                             resume=True))  # fmt: skip
    _assert_same_report(resumed, fresh)


def test_resume_with_other_inputs_is_refused(
    tiny_llama_dir, text_corpus, saes, tmp_path, monkeypatch, one_thread
):
    state = tmp_path / "s.partial.safetensors"
    with monkeypatch.context() as m:
        _stop_after(m, 1)
        with pytest.raises(DiagnoseInterrupted):
            diagnose(_opts(tiny_llama_dir, text_corpus, saes, state, downstream=False))
    before = state.read_bytes()

    with pytest.raises(InputError, match="--tokens 1024, this run has 2048"):
        diagnose(_opts(tiny_llama_dir, text_corpus, saes, state, downstream=False,
                       resume=True, tokens=2048))  # fmt: skip
    saved_sae(saes[1], random_sae(64, 128, architecture="relu", site=Site(2), seed=3))
    with pytest.raises(InputError, match="weights differ"):
        diagnose(_opts(tiny_llama_dir, text_corpus, saes, state, downstream=False, resume=True))
    with pytest.raises(InputError, match="pass --resume"):  # a fresh run would lose the work
        diagnose(_opts(tiny_llama_dir, text_corpus, saes, state, downstream=False))
    assert state.read_bytes() == before  # refused runs leave the state alone

    with pytest.raises(InputError, match="no interrupted diagnosis"):
        diagnose(_opts(tiny_llama_dir, text_corpus, saes, tmp_path / "none.st",
                       downstream=False, resume=True))  # fmt: skip
    state.write_bytes(b"garbage")
    with pytest.raises(InputError, match="not a readable saedoctor diagnose state"):
        diagnose(_opts(tiny_llama_dir, text_corpus, saes, state, downstream=False, resume=True))


def test_cli_interrupt_then_resume(tiny_llama_dir, text_corpus, saes, tmp_path, monkeypatch,
                                   one_thread):  # fmt: skip
    out = tmp_path / "run.json"
    state = tmp_path / "run.json.partial.safetensors"
    args = ["diagnose", "--quiet", "--out", str(out), "--model", str(tiny_llama_dir),
            "--corpus", str(text_corpus), "--tokens", "1024", "--context", "32",
            "--batch-size", "4", *(x for p in saes for x in ("--sae", str(p)))]  # fmt: skip
    with monkeypatch.context() as m:
        _stop_after(m, 4)
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 130, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("saedoctor: interrupted after 512 of 1,024")
    assert "--resume" in lines[0] and str(state) in lines[0]
    assert state.is_file() and not out.exists()

    result = CliRunner().invoke(app, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    assert not state.exists()
    resumed = json.loads(out.read_text())
    fresh = diagnose(_opts(tiny_llama_dir, text_corpus, saes, tmp_path / "ref.st"))
    _assert_same_report(resumed, json.loads(json.dumps(fresh)))
