"""Transcoder training: mlp_in → mlp_out from the same activation stream as SAEs, with the
same losses; export folds the separate input and target scales; a skip learns the linear
part; resume and the command line work as for SAEs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import interrupted_and_uninterrupted
from typer.testing import CliRunner

from conftest import TINY_TEXT
from saedoctor.cli import app
from saedoctor.errors import InputError
from saedoctor.sae.site import Site
from saedoctor.train.config import TrainConfig, with_changes
from saedoctor.train.sae_trainer import TrainableSAE
from saedoctor.train.trainer import train_on_activations

pytestmark = pytest.mark.usefixtures("one_thread")

X_IN, Y_OUT = Site(0, "mlp_in"), Site(0, "mlp_out")


def planted_pairs(n: int = 24_000, d_in: int = 32, d_out: int = 32, atoms: int = 48,
                  active: int = 3, dense: float = 0.5, gain: float = 2.0,
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """x = dense noise + signed sparse input atoms; y = A x + the codes' magnitudes on
    output atoms. The sparse part of y is uncorrelated with x (the signs are symmetric), so
    the best linear map from x to y is A; the dense part of `A x` has no sparse code, so only
    a linear skip can carry it."""
    g = torch.Generator().manual_seed(seed)
    enc_atoms = torch.randn(atoms, d_in, generator=g)
    enc_atoms /= enc_atoms.norm(dim=1, keepdim=True)
    dec_atoms = torch.randn(atoms, d_out, generator=g)
    dec_atoms /= dec_atoms.norm(dim=1, keepdim=True)
    A = torch.randn(d_in, d_out, generator=g) * gain / d_in**0.5
    idx = torch.randint(0, atoms, (n, active), generator=g)
    vals = torch.rand(n, active, generator=g) * 2 + 1
    signs = torch.randint(0, 2, (n, active), generator=g) * 2.0 - 1.0
    x = ((signs * vals)[..., None] * enc_atoms[idx]).sum(1)
    x = x + dense * torch.randn(n, d_in, generator=g)
    y = x @ A + (vals[..., None] * dec_atoms[idx]).sum(1)
    return x, y, A


def config(**changes) -> TrainConfig:
    base = dict(layers=[0], kind="transcoder", site="mlp_in", expansion_factor=4, top_k=6,
                batch_size=2, context=128, shuffle_tokens=8192, training_tokens=24_000,
                checkpoint_every=0, monitor_every=20, learning_rate=2e-3)  # fmt: skip
    base.update(changes)
    return TrainConfig(**base).validate()


def fvu(dictionary, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        y_hat, _ = dictionary(x)
    return float((y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum())


# -- config ------------------------------------------------------------------------------
def test_kind_transcoder_alone_reads_mlp_in_and_a_stray_site_or_skip_is_refused() -> None:
    cfg = with_changes(TrainConfig(), {"kind": "transcoder", "skip": True}, "t").validate()
    assert (cfg.kind, cfg.site, cfg.skip) == ("transcoder", "mlp_in", True)
    with pytest.raises(InputError, match="site=resid_post with kind transcoder"):
        with_changes(TrainConfig(), {"kind": "transcoder", "site": "resid_post"}, "t").validate()
    with pytest.raises(InputError, match="skip: a linear skip needs kind transcoder"):
        TrainConfig(skip=True).validate()
    with pytest.raises(InputError, match="kind='crosscoder'"):
        TrainConfig(kind="crosscoder").validate()
    overridden = config(layers=[0, 3], layer_overrides={"3": {"expansion_factor": 2}})
    assert overridden.for_layer(3).expansion_factor == 2 and overridden.for_layer(3).kind == (
        "transcoder")


# -- what it learns --------------------------------------------------------------------------
def test_a_skip_transcoder_learns_the_linear_part_a_plain_one_cannot() -> None:
    x, y, A = planted_pairs(n=96_000)
    acts = {X_IN: x, Y_OUT: y}
    changes = dict(training_tokens=96_000, batch_size=1, learning_rate=0.01, lr_warmup_steps=10)
    (plain,) = train_on_activations(config(**changes), acts).saes.values()
    (skip,) = train_on_activations(config(skip=True, **changes), acts).saes.values()
    plain_fvu, skip_fvu = fvu(plain, x, y), fvu(skip, x, y)
    # measured: plain 0.27 (the dense part of A x), skip 0.07
    assert skip_fvu < 0.1 and skip_fvu < plain_fvu / 2.5, (plain_fvu, skip_fvu)
    error = float((skip.W_skip - A).norm() / A.norm())
    assert error < 0.15, error  # measured 0.09; zeros (the initial W_skip) is 1
    assert plain.W_skip is None


def test_export_folds_very_different_input_and_target_scales(tmp_path: Path) -> None:
    x, y, _ = planted_pairs(n=48_000)
    x, y = x * 100.0, y * 0.01  # a folding error by s_in/s_out would show by 10^4
    last: dict = {}

    def keep(trainer) -> None:
        last["sae"] = trainer.saes["L0-skip-transcoder-topk-x4-k6"]

    cfg = config(skip=True, training_tokens=48_000, batch_size=1, learning_rate=0.01,
                 lr_warmup_steps=10)  # fmt: skip
    result = train_on_activations(cfg, {X_IN: x, Y_OUT: y}, on_step=keep)
    (exported,) = result.saes.values()
    trained: TrainableSAE = last["sae"]
    rows = slice(0, 2048)
    out = trained.micro_step(x[rows], step=0, scale_loss=0.0, y=y[rows])
    with torch.no_grad():
        y_hat, codes = exported(x[rows])
    assert torch.allclose(y_hat, out.x_hat, rtol=1e-4, atol=1e-4 * float(y.abs().max()))
    assert torch.allclose(codes.dense(), out.codes.dense(), rtol=1e-3,
                          atol=1e-5 * float(out.codes.values.abs().max()))  # fmt: skip
    # The trainer's loss is ‖y' - ŷ'‖² / d_out with y' = s_out·y: the FVU against the
    # first pool's variance. The exported transcoder on raw data gives the same number.
    s_out = float(trained.out_scale)
    raw = float((y[rows] - y_hat).pow(2).sum(-1).mean()) * s_out**2 / y.shape[1]
    assert abs(raw - out.losses["mse"]) < 1e-4, (raw, out.losses["mse"])
    assert fvu(exported, x, y) < 0.2  # measured 0.11


@pytest.mark.parametrize("arch", ["relu", "jumprelu"])
def test_thresholds_and_biases_fold_by_the_target_scale(arch: str) -> None:
    x, y, _ = planted_pairs(n=4096, d_out=24)
    x, y = x * 50.0, y * 0.02
    cfg = config(architecture=arch, skip=True, l1_penalty=1.0, sparsity_penalty=1.0)
    t = TrainableSAE("t", X_IN, cfg, 32, total_steps=10, output_site=Y_OUT, d_out=24)
    t.initialise(x, y)
    with torch.no_grad():
        for p in t.params.values():
            p.add_(torch.randn_like(p) * 0.05)
        t.params["b_enc"].add_(0.3)
        if "threshold" in t.params:
            t.params["threshold"].abs_()
    out = t.micro_step(x[:512], step=0, scale_loss=1.0, y=y[:512])
    with torch.no_grad():
        y_hat, codes = t.export(None, {})(x[:512])
    assert torch.allclose(y_hat, out.x_hat, rtol=1e-4, atol=1e-6)
    assert torch.allclose(codes.dense(), out.codes.dense(), rtol=1e-4, atol=1e-5)
    assert codes.dense().count_nonzero() > 0


def test_in_memory_transcoder_is_placed_and_shaped_as_a_transcoder() -> None:
    x, y, _ = planted_pairs(n=4096, d_in=32, d_out=20)
    cfg = config(layers=[5], skip=True, training_tokens=4096, auxk_alpha=1 / 32,
                 dead_feature_threshold=500, diversity_loss_weight=0.01,
                 decoder_orthogonality_weight=0.01)  # fmt: skip
    result = train_on_activations(cfg, {Site(5, "mlp_in"): x, Site(5, "mlp_out"): y})
    (name,) = result.saes
    tc = result.saes[name]
    assert name == "L5-skip-transcoder-topk-x4-k6"
    assert (tc.site, tc.output_site) == (Site(5, "mlp_in"), Site(5, "mlp_out"))
    assert (tc.cfg.d_in, tc.cfg.d_out, tc.cfg.skip) == (32, 20, True)
    assert tc.is_transcoder and not tc.cfg.apply_b_dec_to_input
    assert tuple(tc.W_dec.shape) == (128, 20) and tuple(tc.W_skip.shape) == (32, 20)
    assert {"mse", "diversity", "orthogonality"} <= set(result.history[-1]["losses"])
    trainer = tc.cfg.metadata["trainer"]
    assert trainer["kind"] == "transcoder" and trainer["output_site"] == "mlp_out"
    with pytest.raises(InputError, match="no activations"):
        train_on_activations(cfg, {Site(5, "mlp_in"): x})


def test_a_run_of_relu_transcoders_also_writes_a_circuit_tracer_set(tmp_path: Path) -> None:
    from saedoctor.sae.loaders import load_dictionaries, load_sae

    x, y, _ = planted_pairs(n=4096)
    acts = {Site(layer, kind): t for layer in (0, 1)
            for kind, t in (("mlp_in", x), ("mlp_out", y))}  # fmt: skip
    cfg = config(layers=[0, 1], architecture="relu", l1_penalty=1.0, skip=True,
                 training_tokens=4096)  # fmt: skip
    result = train_on_activations(cfg, acts, tmp_path / "relu")
    written = result.summary["circuit_tracer"]
    assert written == {"path": str(tmp_path / "relu" / "circuit_tracer")}
    assert [d.site.layer for d in load_dictionaries(written["path"])] == [0, 1]
    for name, trained in result.saes.items():
        for path in (written["path"], result.sae_paths[name]):
            loaded = load_sae(path, layer=trained.site.layer)
            with torch.no_grad():
                assert torch.allclose(loaded(x[:256])[0], trained(x[:256])[0], atol=1e-5)
    # circuit-tracer has no top-k (and wants layers 0..n-1): the run keeps its native
    # dictionaries and says why there is no set
    topk = train_on_activations(config(training_tokens=4096), {X_IN: x, Y_OUT: y},
                                tmp_path / "topk")  # fmt: skip
    assert "skipped" in topk.summary["circuit_tracer"]
    assert not (tmp_path / "topk" / "circuit_tracer").exists()


# -- resume ---------------------------------------------------------------------------------
def test_interrupted_transcoder_run_resumes_to_the_same_weights(tmp_path: Path) -> None:
    x, y, _ = planted_pairs(n=8000, d_in=24, d_out=16)
    acts = {X_IN: x, Y_OUT: y}
    cfg = config(skip=True, architecture="batchtopk", context=64, gradient_accumulation=2,
                 shuffle_tokens=1500, training_tokens=12_000, monitor_every=5,
                 diversity_loss_weight=0.01, lr_warmup_steps=5)  # fmt: skip
    reference, resumed = interrupted_and_uninterrupted(cfg, acts, tmp_path)
    (name,) = reference.saes
    a, b = reference.saes[name].weights(), resumed.saes[name].weights()
    assert a.keys() == b.keys() and "W_skip" in a
    for key in a:
        assert torch.equal(a[key], b[key]), key


# -- command line ---------------------------------------------------------------------------
def test_cli_transcoder_with_another_site_exits_2_with_one_line(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["train", "--kind", "transcoder", "--site", "resid_post"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "site=resid_post with kind transcoder" in lines[0]
    result = CliRunner().invoke(app, ["train", "--skip"])
    assert result.exit_code == 2 and "needs kind transcoder" in result.output


def test_cli_trains_skip_transcoders_on_two_layers_of_the_tiny_model(
    tiny_llama_dir, text_corpus, tmp_path
) -> None:
    from saedoctor.activations.batches import token_batches
    from saedoctor.activations.model import load_model
    from saedoctor.activations.stream import site_batches
    from saedoctor.train.trainer import train

    out = tmp_path / "tc"
    result = CliRunner().invoke(app, [
        "train", "--model", str(tiny_llama_dir), "--dataset", str(text_corpus),
        "--kind", "transcoder", "--skip", "--layer", "1", "--layer", "2", "--tokens", "4096",
        "--context", "32", "--batch-size", "2", "--expansion-factor", "2", "--top-k", "8",
        "--learning-rate", "0.01", "--set", "shuffle_tokens=1024", "--out", str(out),
        "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "train.json").read_text())
    names = ["L1-skip-transcoder-topk-x2-k8", "L2-skip-transcoder-topk-x2-k8"]
    assert sorted(summary["saes"]) == names
    assert all(e["site"] == "mlp_in" and e["output_site"] == "mlp_out"
               for e in summary["saes"].values())  # fmt: skip
    assert "skipped" in summary["circuit_tracer"]  # topk: circuit-tracer has no k
    # The run's own config, from Python, gives the in-memory dictionaries to check.
    trained = train(TrainConfig.from_dict(summary["config"]), tmp_path / "again", quiet=True)
    loaded = load_model(str(tiny_llama_dir))
    held_out = [f"{t} Document {i} talks about item {i * 7 % 13}."
                for i, t in enumerate(TINY_TEXT * 3, start=60)]  # the corpus stops at 59
    batches = token_batches(loaded.tokenizer, held_out, context=32, batch_size=4,
                            max_tokens=None)  # fmt: skip
    sites = [Site(layer, kind) for layer in (1, 2) for kind in ("mlp_in", "mlp_out")]
    parts = [b.acts for b in site_batches(loaded.model, sites, batches)]
    acts = {s: torch.cat([p[s] for p in parts]).float() for s in sites}
    for layer, name in zip((1, 2), names, strict=True):
        tc = trained.saes[name]
        assert tc.site == Site(layer, "mlp_in") and tc.output_site == Site(layer, "mlp_out")
        score = fvu(tc, acts[Site(layer, "mlp_in")], acts[Site(layer, "mlp_out")])
        assert score < 0.7, (layer, score)  # measured 0.31 and 0.33
