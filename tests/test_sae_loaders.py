"""SAE loaders: each format written by hand the way its project writes it, checked against
that project's forward pass computed naively from the raw tensors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import require_module
from safetensors.torch import save_file

from saedoctor.errors import InputError
from saedoctor.sae.loaders import (
    LOADERS,
    detect_format,
    load_sae,
    register_loader,
    save_sae,
)
from saedoctor.sae.model import SAE, SAEConfig, build_sae
from saedoctor.sae.site import Site

D_IN, D_SAE, K = 6, 16, 3
ATOL = 1e-5


def rand(*shape: int, seed: int, scale: float = 0.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


@pytest.fixture()
def x() -> torch.Tensor:
    return torch.randn(12, D_IN, generator=torch.Generator().manual_seed(7))


def dense_out(sae: SAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        codes = sae.encode(x)
        return codes.dense(), sae.decode(codes)


def topk_dense(pre: torch.Tensor, k: int) -> torch.Tensor:
    top = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, top.indices, top.values)


def assert_matches(sae: SAE, x: torch.Tensor, f_ref: torch.Tensor, xhat_ref: torch.Tensor) -> None:
    f, xhat = dense_out(sae, x)
    assert (f_ref > 0).any() and (f_ref == 0).any(), "test data should mix on and off"
    torch.testing.assert_close(f, f_ref, atol=ATOL, rtol=1e-5)
    torch.testing.assert_close(xhat, xhat_ref, atol=ATOL, rtol=1e-5)


# -- sparsify -----------------------------------------------------------------------------
def write_sparsify(folder: Path, dtype: torch.dtype = torch.bfloat16, **cfg_extra) -> dict:
    folder.mkdir(parents=True)
    tensors = {
        "encoder.weight": rand(D_SAE, D_IN, seed=1),
        "encoder.bias": rand(D_SAE, scale=0.1, seed=2),
        "W_dec": rand(D_SAE, D_IN, seed=3),
        "b_dec": rand(D_IN, scale=0.1, seed=4),
    }
    tensors = {k: v.to(dtype) for k, v in tensors.items()}
    save_file(tensors, str(folder / "sae.safetensors"))
    cfg = {"activation": "topk", "expansion_factor": 32, "normalize_decoder": True,
           "num_latents": D_SAE, "k": K, "multi_topk": False, "skip_connection": False,
           "transcode": False, "d_in": D_IN, **cfg_extra}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return tensors


def test_sparsify_matches_reference(tmp_path: Path, x: torch.Tensor) -> None:
    run = tmp_path / "run"
    t = {k: v.float() for k, v in write_sparsify(run / "layers.2").items()}
    (run / "config.json").write_text(json.dumps({"model": "EleutherAI/pythia-70m",
                                                 "dataset": "pile", "ctx_len": 64}))
    sae = load_sae(run / "layers.2")
    # sparsify: top_k(relu((x - b_dec) @ encoder.weight.T + encoder.bias)); acts @ W_dec + b_dec
    f_ref = topk_dense(F.relu((x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"]), K)
    assert_matches(sae, x, f_ref, f_ref @ t["W_dec"] + t["b_dec"])
    assert sae.cfg.site == Site(2, "resid_post")
    assert sae.cfg.architecture == "topk" and sae.cfg.k == K and sae.dtype == torch.float32
    assert sae.cfg.model_name == "EleutherAI/pythia-70m"
    assert sae.cfg.metadata["dataset_path"] == "pile"
    assert sae.cfg.metadata["source_format"] == "sparsify"
    assert sae.cfg.metadata["source_path"] == str(run / "layers.2")
    assert detect_format(run / "layers.2") == "sparsify"


def test_sparsify_several_hookpoints_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_sparsify(run / "layers.0")
    write_sparsify(run / "layers.1.mlp")
    with pytest.raises(InputError) as e:
        load_sae(run)
    msg = str(e.value)
    assert str(run) in msg and "layers.0" in msg and "layers.1.mlp" in msg
    assert load_sae(run / "layers.1.mlp").cfg.site == Site(1, "mlp_out")


def test_sparsify_expansion_factor_and_unsupported_option(tmp_path: Path) -> None:
    write_sparsify(tmp_path / "a", num_latents=0, expansion_factor=D_SAE // D_IN + 1)
    with pytest.raises(InputError, match="shape"):
        load_sae(tmp_path / "a")
    # Transcoders load now (tests/test_transcoder_loaders.py); embed_skip still cannot.
    write_sparsify(tmp_path / "b", embed_skip=True)
    with pytest.raises(InputError, match="embed_skip"):
        load_sae(tmp_path / "b")


# -- Goodfire -----------------------------------------------------------------------------
def write_goodfire(path: Path) -> dict:
    sd = {
        "encoder_linear.weight": rand(D_SAE, D_IN, seed=11),
        "encoder_linear.bias": rand(D_SAE, scale=0.1, seed=12),
        "decoder_linear.weight": rand(D_IN, D_SAE, seed=13),
        "decoder_linear.bias": rand(D_IN, scale=0.1, seed=14),
    }
    torch.save(sd, path)
    return sd


def test_goodfire_matches_reference(tmp_path: Path, x: torch.Tensor) -> None:
    t = write_goodfire(tmp_path / "sae.pth")
    assert detect_format(tmp_path / "sae.pth") == "goodfire"
    sae = load_sae(tmp_path / "sae.pth")
    assert sae.cfg.site is None and not sae.cfg.apply_b_dec_to_input
    # Goodfire: relu(encoder_linear(x)); decoder_linear(f)
    f_ref = F.relu(x @ t["encoder_linear.weight"].T + t["encoder_linear.bias"])
    assert_matches(sae, x, f_ref, f_ref @ t["decoder_linear.weight"].T + t["decoder_linear.bias"])
    assert load_sae(tmp_path / "sae.pth", layer=5).cfg.site == Site(5, "resid_post")
    assert load_sae(tmp_path / "sae.pth", layer=5, site="mlp_out").cfg.site == Site(5, "mlp_out")


def test_goodfire_release_name_gives_layer(tmp_path: Path) -> None:
    path = tmp_path / "Llama-3.1-8B-Instruct-SAE-l19.pth"
    write_goodfire(path)
    assert load_sae(path).cfg.site == Site(19, "resid_post")


# -- dictionary_learning ------------------------------------------------------------------
def _dl_state(dict_class: str) -> dict[str, torch.Tensor]:
    enc_w, enc_b = rand(D_SAE, D_IN, seed=21), rand(D_SAE, scale=0.1, seed=22)
    dec_w, bias = rand(D_IN, D_SAE, seed=23), rand(D_IN, scale=0.1, seed=24)
    topk = {"k": torch.tensor(K, dtype=torch.int), "threshold": torch.tensor(0.25)}
    plain = {"W_enc": enc_w.T.clone(), "b_enc": enc_b, "W_dec": dec_w.T.clone(), "b_dec": bias}
    return {
        "AutoEncoder": {"bias": bias, "encoder.weight": enc_w, "encoder.bias": enc_b,
                        "decoder.weight": dec_w},
        "AutoEncoderNew": {"encoder.weight": enc_w, "encoder.bias": enc_b,
                           "decoder.weight": dec_w, "decoder.bias": bias},
        "AutoEncoderTopK": {**topk, "decoder.weight": dec_w, "encoder.weight": enc_w,
                            "encoder.bias": enc_b, "b_dec": bias},
        "BatchTopKSAE": {**topk, "decoder.weight": dec_w, "encoder.weight": enc_w,
                         "encoder.bias": enc_b, "b_dec": bias},
        "MatryoshkaBatchTopKSAE": {**topk, "group_sizes": torch.tensor([4, 12]), **plain},
        "JumpReluAutoEncoder": {**plain, "threshold": rand(D_SAE, scale=0.2, seed=25).abs()},
        "GatedAutoEncoder": {"decoder_bias": bias, "r_mag": rand(D_SAE, scale=0.3, seed=26),
                             "gate_bias": enc_b, "mag_bias": rand(D_SAE, scale=0.1, seed=27),
                             "encoder.weight": enc_w, "decoder.weight": dec_w},
    }[dict_class]


def _dl_reference(cls: str, t: dict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """dictionary_learning's encode/decode for each class, from its source."""
    if cls == "AutoEncoder":
        f = F.relu((x - t["bias"]) @ t["encoder.weight"].T + t["encoder.bias"])
        return f, f @ t["decoder.weight"].T + t["bias"]
    if cls == "AutoEncoderNew":
        f = F.relu(x @ t["encoder.weight"].T + t["encoder.bias"])
        return f, f @ t["decoder.weight"].T + t["decoder.bias"]
    if cls in ("AutoEncoderTopK", "BatchTopKSAE"):
        post = F.relu((x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"])
        f = topk_dense(post, K) if cls == "AutoEncoderTopK" else post * (post > t["threshold"])
        return f, f @ t["decoder.weight"].T + t["b_dec"]
    if cls == "MatryoshkaBatchTopKSAE":
        post = F.relu((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"])
        f = post * (post > t["threshold"])
        return f, f @ t["W_dec"] + t["b_dec"]
    if cls == "JumpReluAutoEncoder":
        pre = x @ t["W_enc"] + t["b_enc"]
        f = F.relu(pre * (pre > t["threshold"]))
        return f, f @ t["W_dec"] + t["b_dec"]
    x_enc = (x - t["decoder_bias"]) @ t["encoder.weight"].T
    gate = (x_enc + t["gate_bias"] > 0).float()
    f = gate * F.relu(t["r_mag"].exp() * x_enc + t["mag_bias"])
    return f, f @ t["decoder.weight"].T + t["decoder_bias"]


def write_dictionary_learning(folder: Path, cls: str, **trainer_extra) -> dict:
    folder.mkdir(parents=True)
    sd = _dl_state(cls)
    torch.save(sd, folder / "ae.pt")
    trainer = {"trainer_class": "X", "dict_class": cls, "activation_dim": D_IN,
               "dict_size": D_SAE, "k": K, "layer": 3, "lm_name": "EleutherAI/pythia-70m-deduped",
               "submodule_name": "resid_post_layer_3", "steps": 100, **trainer_extra}
    cfg = {"trainer": trainer, "buffer": {"ctx_len": 128, "out_batch_size": 64}}
    (folder / "config.json").write_text(json.dumps(cfg))
    return sd


DL_CLASSES = ["AutoEncoder", "AutoEncoderNew", "AutoEncoderTopK", "BatchTopKSAE",
              "MatryoshkaBatchTopKSAE", "JumpReluAutoEncoder", "GatedAutoEncoder"]


@pytest.mark.parametrize("cls", DL_CLASSES)
def test_dictionary_learning_matches_reference(tmp_path: Path, x: torch.Tensor, cls: str) -> None:
    sd = write_dictionary_learning(tmp_path / "ae", cls)
    assert detect_format(tmp_path / "ae") == "dictionary_learning"
    sae = load_sae(tmp_path / "ae")
    assert_matches(sae, x, *_dl_reference(cls, sd, x))
    assert sae.cfg.site == Site(3, "resid_post")
    assert sae.cfg.model_name == "EleutherAI/pythia-70m-deduped"
    assert sae.cfg.metadata["training_tokens"] == 6400
    assert sae.cfg.metadata["dict_class"] == cls


@pytest.mark.parametrize(
    ("submodule", "site"),
    [("mlp_out_layer_1", Site(1, "mlp_out")), ("attn", Site(3, "attn_out")),
     (None, Site(3, "resid_post")), ("embed", None)],
)
def test_dictionary_learning_sites(tmp_path: Path, submodule: str | None, site: Site) -> None:
    write_dictionary_learning(tmp_path / "ae", "AutoEncoder", submodule_name=submodule)
    assert load_sae(tmp_path / "ae" / "ae.pt").cfg.site == site


# -- native / SAELens ---------------------------------------------------------------------
NATIVE_KINDS = ["relu", "topk", "batchtopk", "batchtopk_threshold", "jumprelu", "gated"]


def make_sae(kind: str, dtype: str = "float32") -> SAE:
    arch = "batchtopk" if kind.startswith("batchtopk") else kind
    cfg = SAEConfig(
        architecture=arch, d_in=D_IN, d_sae=D_SAE,
        k=K if arch in ("topk", "batchtopk") else None,
        apply_b_dec_to_input=kind != "jumprelu", site=Site(2, "mlp_out"), model_name="tiny",
        dtype=dtype, metadata={"dataset_path": "corpus", "training_tokens": 1000},
    )
    t = {"W_enc": rand(D_IN, D_SAE, seed=31), "b_enc": rand(D_SAE, scale=0.1, seed=32),
         "W_dec": rand(D_SAE, D_IN, seed=33), "b_dec": rand(D_IN, scale=0.1, seed=34)}
    if kind in ("jumprelu", "batchtopk_threshold"):
        t["threshold"] = rand(D_SAE, scale=0.2, seed=35).abs()
    if kind == "gated":
        t.update(b_gate=rand(D_SAE, scale=0.1, seed=36), r_mag=rand(D_SAE, scale=0.3, seed=37),
                 b_mag=rand(D_SAE, scale=0.1, seed=38), b_enc=torch.zeros(D_SAE))
    return build_sae(cfg, t, "test")


@pytest.mark.parametrize("kind", NATIVE_KINDS)
def test_native_round_trip(tmp_path: Path, x: torch.Tensor, kind: str) -> None:
    sae = make_sae(kind)
    out = save_sae(sae, tmp_path / "out")
    assert out == tmp_path / "out" and detect_format(out) == "native"
    back = load_sae(out)
    assert back.weights().keys() == sae.weights().keys()
    for name, w in sae.weights().items():
        assert torch.equal(back.weights()[name], w), name
    for field in ("architecture", "d_in", "d_sae", "k", "apply_b_dec_to_input", "site",
                  "model_name", "dtype"):
        assert getattr(back.cfg, field) == getattr(sae.cfg, field), field
    assert back.cfg.metadata["dataset_path"] == "corpus"
    assert back.cfg.metadata["source_format"] == "native"
    assert back.is_sparse == sae.is_sparse
    f, xhat = dense_out(sae, x)
    f2, xhat2 = dense_out(back, x)
    assert torch.equal(f, f2) and torch.equal(xhat, xhat2)
    assert not [p.name for p in tmp_path.iterdir() if p.name != "out"], "temp dir left behind"


def test_native_float64_and_overwrite(tmp_path: Path) -> None:
    save_sae(make_sae("relu"), tmp_path / "out")
    (tmp_path / "out" / "notes.txt").write_text("keep me")
    save_sae(make_sae("topk", dtype="float64"), tmp_path / "out")
    back = load_sae(tmp_path / "out")
    assert back.cfg.architecture == "topk" and back.dtype == torch.float64
    assert (tmp_path / "out" / "notes.txt").read_text() == "keep me"
    assert load_sae(tmp_path / "out", dtype="float32").dtype == torch.float32


def _saelens():
    return require_module("sae_lens")


@pytest.mark.parametrize("kind", ["relu", "topk", "jumprelu", "gated", "batchtopk_threshold"])
def test_saelens_loads_what_we_save(tmp_path: Path, x: torch.Tensor, kind: str) -> None:
    sae_lens = _saelens()
    sae = make_sae(kind)
    save_sae(sae, tmp_path / "out")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "out"))
    ours = {k: v for k, v in sae.weights().items() if not (kind == "gated" and k == "b_enc")}
    assert set(theirs.state_dict()) == set(ours)
    for name, w in ours.items():
        assert torch.equal(theirs.state_dict()[name], w), name
    assert theirs.cfg.metadata.hook_name == "blocks.2.hook_mlp_out"
    f, xhat = dense_out(sae, x)
    with torch.no_grad():
        f_theirs = theirs.encode(x)
        torch.testing.assert_close(f_theirs, f, atol=ATOL, rtol=1e-5)
        torch.testing.assert_close(theirs.decode(f_theirs), xhat, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("kind", ["relu", "topk", "jumprelu", "gated"])
def test_reads_saelens_written_dir(tmp_path: Path, x: torch.Tensor, kind: str) -> None:
    sae_lens = _saelens()
    save_sae(make_sae(kind), tmp_path / "ours")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "ours"))
    theirs.save_model(str(tmp_path / "theirs"))  # SAELens's own writer, no saedoctor block
    assert "saedoctor" not in json.loads((tmp_path / "theirs" / "cfg.json").read_text())
    back = load_sae(tmp_path / "theirs")
    assert back.cfg.architecture == kind and back.cfg.site == Site(2, "mlp_out")
    assert back.cfg.metadata["dataset_path"] == "corpus"
    with torch.no_grad():
        f_ref = theirs.encode(x)
        assert_matches(back, x, f_ref, theirs.decode(f_ref))


def test_reads_pre_6_saelens_config(tmp_path: Path, x: torch.Tensor) -> None:
    folder = tmp_path / "old"
    folder.mkdir()
    t = {"W_enc": rand(D_IN, D_SAE, seed=41), "b_enc": rand(D_SAE, scale=0.1, seed=42),
         "W_dec": rand(D_SAE, D_IN, seed=43), "b_dec": rand(D_IN, scale=0.1, seed=44)}
    save_file(t, str(folder / "sae_weights.safetensors"))
    cfg = {"d_in": D_IN, "d_sae": D_SAE, "hook_point": "blocks.4.hook_resid_pre",
           "hook_point_layer": 4, "activation_fn_str": "topk", "activation_fn_kwargs": {"k": K},
           "apply_b_dec_to_input": True, "model_name": "gpt2", "dataset_path": "owt",
           "training_tokens": 123, "dtype": "float32", "normalize_activations": False}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    sae = load_sae(folder / "cfg.json")
    assert sae.cfg.architecture == "topk" and sae.cfg.site == Site(4, "resid_pre")
    assert sae.cfg.model_name == "gpt2" and sae.cfg.metadata["training_tokens"] == 123
    # SAELens topk: relu(topk((x - b_dec) @ W_enc + b_enc)); f @ W_dec + b_dec
    f_ref = F.relu(topk_dense((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"], K))
    assert_matches(sae, x, f_ref, f_ref @ t["W_dec"] + t["b_dec"])


def test_saelens_release_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            x: torch.Tensor) -> None:
    sae_lens = _saelens()
    save_sae(make_sae("topk"), tmp_path / "out")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "out"))
    calls = []

    def fake_from_pretrained(release: str, sae_id: str, **kwargs):  # no network in tests
        calls.append((release, sae_id))
        return theirs

    monkeypatch.setattr(sae_lens.SAE, "from_pretrained", staticmethod(fake_from_pretrained))
    monkeypatch.chdir(tmp_path)
    spec = "tiny-release:blocks.2.hook_mlp_out/k3"
    assert detect_format(spec) == "saelens_release"
    sae = load_sae(spec)
    assert calls == [("tiny-release", "blocks.2.hook_mlp_out/k3")]
    assert sae.cfg.metadata["saelens_release"] == "tiny-release"
    assert sae.cfg.site == Site(2, "mlp_out") and sae.cfg.k == K
    with torch.no_grad():
        f_ref = theirs.encode(x)
        assert_matches(sae, x, f_ref, theirs.decode(f_ref))


# -- registry -----------------------------------------------------------------------------
def test_register_loader(tmp_path: Path) -> None:
    from saedoctor.sae.formats import goodfire

    path = tmp_path / "w.mysae"
    write_goodfire(path)
    register_loader("mysae", lambda p: p.suffix == ".mysae", goodfire.load, expects="*.mysae")
    try:
        assert detect_format(path) == "mysae"
        assert load_sae(path).cfg.metadata["source_format"] == "mysae"
    finally:
        from saedoctor.sae import loaders

        for table in (loaders.LOADERS, loaders.DETECTORS, loaders.EXPECTED):
            table.pop("mysae")
    assert "mysae" not in LOADERS


# -- bad input ----------------------------------------------------------------------------
def raises_naming(path: Path | str, *args, **kwargs) -> str:
    with pytest.raises(InputError) as e:
        load_sae(*args, **kwargs)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg
    return msg


def test_missing_path(tmp_path: Path) -> None:
    raises_naming(tmp_path / "nope", tmp_path / "nope")


def test_unknown_format_dir(tmp_path: Path) -> None:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "readme.txt").write_text("hi")
    msg = raises_naming(tmp_path / "junk", tmp_path / "junk")
    assert "sae_weights.safetensors" in msg and "ae.pt" in msg and "sae.safetensors" in msg


def test_truncated_safetensors(tmp_path: Path) -> None:
    save_sae(make_sae("relu"), tmp_path / "out")
    weights = tmp_path / "out" / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert "safetensors" in raises_naming(weights, tmp_path / "out")


def test_invalid_json(tmp_path: Path) -> None:
    save_sae(make_sae("relu"), tmp_path / "out")
    (tmp_path / "out" / "cfg.json").write_text("{ not json")
    assert "JSON" in raises_naming(tmp_path / "out", tmp_path / "out")


def test_nan_weights(tmp_path: Path) -> None:
    sae = make_sae("topk")
    with torch.no_grad():
        sae.W_dec[3, 1] = float("nan")
    save_sae(sae, tmp_path / "out")
    assert "NaN" in raises_naming(tmp_path / "out", tmp_path / "out")


def test_shape_mismatch(tmp_path: Path) -> None:
    save_sae(make_sae("relu"), tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "cfg.json").read_text())
    cfg["d_sae"] = D_SAE + 1
    (tmp_path / "out" / "cfg.json").write_text(json.dumps(cfg))
    assert "shape" in raises_naming(tmp_path / "out", tmp_path / "out")


def test_missing_tensor(tmp_path: Path) -> None:
    write_sparsify(tmp_path / "layers.0")
    weights = tmp_path / "layers.0" / "sae.safetensors"
    from safetensors.torch import load_file

    t = load_file(str(weights))
    del t["b_dec"]
    save_file(t, str(weights))
    assert "b_dec" in raises_naming(weights, tmp_path / "layers.0")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_malicious_pickle_refused(tmp_path: Path) -> None:
    # Prove the payload is live: an unrestricted load does create its marker.
    armed = tmp_path / "armed.pt"
    torch.save({"encoder_linear.weight": _Evil(tmp_path / "armed_marker")}, armed)
    torch.load(armed, weights_only=False)
    assert (tmp_path / "armed_marker").exists()

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"encoder_linear.weight": _Evil(marker)}, evil)
    assert "refuse" in raises_naming(evil, evil)
    assert not marker.exists()
    (tmp_path / "ae").mkdir()
    torch.save({"bias": _Evil(marker)}, tmp_path / "ae" / "ae.pt")
    (tmp_path / "ae" / "config.json").write_text(json.dumps({"trainer": {"dict_class": "X"}}))
    raises_naming(tmp_path / "ae" / "ae.pt", tmp_path / "ae")
    assert not marker.exists()


def test_wrong_explicit_format_and_options(tmp_path: Path) -> None:
    save_sae(make_sae("relu"), tmp_path / "out")
    assert "sparsify" in raises_naming(tmp_path / "out", tmp_path / "out", format="sparsify")
    raises_naming(tmp_path / "out", tmp_path / "out", format="nonsense")
    assert load_sae(tmp_path / "out", format="native").cfg.architecture == "relu"
    with pytest.raises(InputError, match="dtype"):
        load_sae(tmp_path / "out", dtype="int8")
    with pytest.raises(InputError, match="site"):
        load_sae(tmp_path / "out", site="hook_z")
    assert load_sae(tmp_path / "out", site="blocks.7.hook_attn_out").cfg.site == Site(7, "attn_out")
    assert load_sae(tmp_path / "out", layer=4).cfg.site == Site(4, "mlp_out")
