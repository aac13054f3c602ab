"""Kill and resume: an interrupted run, resumed, equals the uninterrupted one bit for bit."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from helpers import ctrl_c_at

from saedoctor.errors import InputError
from saedoctor.train.checkpoint import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from saedoctor.train.config import TrainConfig
from saedoctor.train.trainer import TrainingInterrupted, train, train_on_activations

pytestmark = pytest.mark.usefixtures("one_thread")


def _assert_same_saes(a, b) -> None:
    assert a.saes.keys() == b.saes.keys()
    for name in a.saes:
        wa, wb = a.saes[name].weights(), b.saes[name].weights()
        assert wa.keys() == wb.keys()
        for key in wa:
            assert torch.equal(wa[key], wb[key]), (name, key)


def _activations(n: int = 12_000, d: int = 24) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    atoms = torch.randn(96, d, generator=g)
    idx = torch.randint(0, 96, (n, 3), generator=g)
    return (torch.rand(n, 3, generator=g)[..., None] * atoms[idx]).sum(1) + 2.0


def test_in_memory_run_interrupted_by_ctrl_c_resumes_to_the_same_weights(tmp_path: Path):
    x = _activations()
    cfg = TrainConfig(
        layers=[0], expansion_factor=4, top_k=4, batch_size=2, context=64,
        gradient_accumulation=2, shuffle_tokens=1500, training_tokens=20_000,
        checkpoint_every=0, monitor_every=5, diversity_loss_weight=0.01,
        decoder_orthogonality_weight=0.01, lr_warmup_steps=5,
    )  # fmt: skip
    reference = train_on_activations(cfg, x, tmp_path / "ref")
    out = tmp_path / "run"
    # Whatever SIGINT's disposition was (a job started in the background inherits it ignored).
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as err:
        train_on_activations(cfg, x, out, on_step=ctrl_c_at(23))
    assert err.value.step == 23 and (out / CHECKPOINT_FILE).is_file()
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
    resumed = train_on_activations(cfg, x, out, resume=True)
    _assert_same_saes(reference, resumed)
    assert resumed.steps == reference.steps == cfg.total_steps
    assert [r["variance_explained"] for r in resumed.history] == [
        r["variance_explained"] for r in reference.history
    ]
    assert not (out / CHECKPOINT_FILE).exists()  # removed once the SAEs are saved


def test_sigterm_saves_a_checkpoint_like_ctrl_c(tmp_path: Path) -> None:
    x = _activations(n=6000)
    cfg = TrainConfig(layers=[0], expansion_factor=2, top_k=4, batch_size=2, context=64,
                      shuffle_tokens=1500, training_tokens=6000, checkpoint_every=0)  # fmt: skip
    reference = train_on_activations(cfg, x, tmp_path / "ref")

    def terminate(trainer) -> None:
        if trainer.step == 9:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted):
        train_on_activations(cfg, x, tmp_path / "run", on_step=terminate)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    _assert_same_saes(reference, train_on_activations(cfg, x, tmp_path / "run", resume=True))


def _tiny_cfg(tiny_llama_dir: Path, corpus: Path, **changes) -> TrainConfig:
    base = dict(
        model=str(tiny_llama_dir), dataset=str(corpus), layers=[1, 3], context=32, batch_size=2,
        shuffle_tokens=300, training_tokens=3_000, expansion_factor=2, top_k=8,
        checkpoint_every=0, monitor_every=10, auxk_alpha=1 / 32, dead_feature_threshold=500,
    )  # fmt: skip
    base.update(changes)
    return TrainConfig(**base)


def test_model_run_resumes_mid_pool_and_across_epochs(tiny_llama_dir, text_corpus, tmp_path):
    # ~1.3k counted tokens per pass over the corpus: 3k tokens take three epochs.
    cfg = _tiny_cfg(tiny_llama_dir, text_corpus)
    reference = train(cfg, tmp_path / "ref", quiet=True)
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train(cfg, out, quiet=True, on_step=ctrl_c_at(31))
    state = load_checkpoint(out)
    assert state["progress"]["step"] == 31 and state["progress"]["used"] > 0
    resumed = train(None, out, resume=True, quiet=True)
    _assert_same_saes(reference, resumed)
    meta = resumed.saes["L1-resid_post-topk-x2-k8"].cfg.metadata
    assert meta["training_corpus"] == str(text_corpus)
    assert meta["training_tokens"] == cfg.total_steps * cfg.tokens_per_step
    assert meta["trainer"]["layer"] == 1 and meta["trainer"]["top_k"] == 8


def test_periodic_checkpoints_and_cli_resume(tiny_llama_dir, text_corpus, tmp_path):
    from typer.testing import CliRunner

    from saedoctor.cli import app

    cfg = _tiny_cfg(tiny_llama_dir, text_corpus, layers=[2], checkpoint_every=10)
    reference = train(cfg, tmp_path / "ref", quiet=True)
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train(cfg, out, quiet=True, on_step=ctrl_c_at(17), keep_checkpoint=True)
    # starting afresh over an unfinished run is refused; --resume continues it
    again = CliRunner().invoke(app, ["train", "--out", str(out), "--model", str(tiny_llama_dir)])
    assert again.exit_code == 2 and "--resume" in again.output
    result = CliRunner().invoke(app, ["train", "--resume", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    from saedoctor.sae.loaders import load_sae

    name = "L2-resid_post-topk-x2-k8"
    loaded = load_sae(out / name)
    assert torch.equal(loaded.W_enc, reference.saes[name].W_enc)
    assert torch.equal(loaded.b_dec, reference.saes[name].b_dec)


def test_checkpoints_never_unpickle_code(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / CHECKPOINT_FILE
    torch.save({"format": "saedoctor.train-checkpoint/1", "x": Evil()}, path)
    with pytest.raises(InputError, match="not a readable saedoctor checkpoint"):
        load_checkpoint(path)
    save_checkpoint(path, {"x": torch.ones(2)})
    assert torch.equal(load_checkpoint(tmp_path)["x"], torch.ones(2))
    with pytest.raises(InputError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing")


def test_ctrl_c_while_reading_the_next_pool(tiny_llama_dir, text_corpus, tmp_path, monkeypatch):
    from saedoctor.activations.sites import SiteReader

    cfg = _tiny_cfg(tiny_llama_dir, text_corpus, layers=[1], training_tokens=1_536)
    reference = train(cfg, tmp_path / "ref", quiet=True)
    read, calls = SiteReader.read, {"n": 0}

    def read_then_ctrl_c(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 12:  # the second pool's forward passes: between optimizer steps
            os.kill(os.getpid(), signal.SIGINT)
        return read(self, *args, **kwargs)

    monkeypatch.setattr(SiteReader, "read", read_then_ctrl_c)
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as err:
        train(cfg, out, quiet=True)
    assert 0 < err.value.step < cfg.total_steps
    monkeypatch.setattr(SiteReader, "read", read)
    _assert_same_saes(reference, train(None, out, resume=True, quiet=True))


def test_the_last_pool_reads_only_what_the_run_needs(tiny_llama_dir, text_corpus, tmp_path,
                                                     monkeypatch):  # fmt: skip
    from saedoctor.activations.sites import SiteReader

    read, seen = SiteReader.read, {"tokens": 0}

    def counting(self, input_ids, *args, **kwargs):
        seen["tokens"] += input_ids.numel()
        return read(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(SiteReader, "read", counting)
    cfg = _tiny_cfg(tiny_llama_dir, text_corpus, layers=[1], shuffle_tokens=4096,
                    training_tokens=640)  # fmt: skip
    result = train(cfg, tmp_path / "run", quiet=True)
    assert result.tokens == 640
    # a 4096-token pool would read ~4x more; specials and padding make a batch count less
    assert seen["tokens"] <= 640 * 1.25 + cfg.batch_size * cfg.context
