"""Transcoder loaders: circuit-tracer sets, Gemma Scope .npz, sparsify (skip) transcoders.

Each format is written from known tensors the way its project writes it and checked against
that project's documented forward pass, computed in float64 numpy from the raw arrays."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from saedoctor.errors import InputError
from saedoctor.sae.loaders import (
    detect_format,
    load_dictionaries,
    load_sae,
    save_circuit_tracer,
)
from saedoctor.sae.model import Dictionary, SAEConfig
from saedoctor.sae.site import Site

DATA = Path(__file__).parent / "data" / "circuit_tracer"
D_IN, D_OUT, D_SAE = 6, 5, 16
ATOL = 1e-5


def rand(*shape: int, seed: int, scale: float = 0.5) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def run(d: Dictionary, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        out, codes = d(x)
    return codes.dense().double().numpy(), out.double().numpy()


def check(d: Dictionary, x: torch.Tensor, acts: np.ndarray, out: np.ndarray) -> None:
    assert (acts > 0).any() and (acts == 0).any(), "test data should mix on and off"
    got_acts, got_out = run(d, x)
    np.testing.assert_allclose(got_acts, acts, atol=ATOL, rtol=1e-5)
    np.testing.assert_allclose(got_out, out, atol=ATOL, rtol=1e-5)


def one_line(e: pytest.ExceptionInfo, *needles: str) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


def f64(t: torch.Tensor) -> np.ndarray:
    return t.double().numpy()


# -- circuit-tracer: files written by circuit-tracer itself -------------------------------
@pytest.mark.parametrize("name", ["plt", "plt_skip", "plt_relu", "plt_topk_skip"])
def test_circuit_tracer_written_sets_match_its_encode_decode(name: str) -> None:
    inputs = load_file(str(DATA / "inputs.safetensors"))
    expected = load_file(str(DATA / f"{name}_out.safetensors"))
    assert detect_format(DATA / name) == "circuit_tracer"
    dicts = load_dictionaries(DATA / name)
    assert len(dicts) == 3
    for i, d in enumerate(dicts):
        assert d.site == Site(i, "mlp_in") and d.output_site == Site(i, "mlp_out")
        assert d.is_transcoder and not d.cfg.apply_b_dec_to_input
        assert (d.W_skip is not None) == ("skip" in name)
        check(d, inputs[f"x_{i}"], f64(expected[f"acts_{i}"]), f64(expected[f"recon_{i}"]))


def test_circuit_tracer_cross_layer_config_refused() -> None:
    with pytest.raises(InputError) as e:
        load_sae(DATA / "clt")
    one_line(e, str(DATA / "clt"), "cross-layer transcoders are not supported yet")


# -- circuit-tracer: planted sets -----------------------------------------------------------
def ct_layer(seed: int, *, d_out: int = D_IN, skip: bool = False, jump: bool = True) -> dict:
    """One SingleLayerTranscoder.to_safetensors dict: W_enc [d_t, d_in], W_skip [d_out, d_in]."""
    t = {
        "W_enc": rand(D_SAE, D_IN, seed=seed),
        "W_dec": rand(D_SAE, d_out, seed=seed + 1),
        "b_enc": rand(D_SAE, seed=seed + 2, scale=0.2),
        "b_dec": rand(d_out, seed=seed + 3, scale=0.2),
    }
    if jump:
        t["activation_function.threshold"] = rand(D_SAE, seed=seed + 4, scale=0.3).abs()
    if skip:
        t["W_skip"] = rand(d_out, D_IN, seed=seed + 5, scale=0.3)
    return t


def write_ct(folder: Path, layers: list[dict], **cfg: object) -> Path:
    folder.mkdir(parents=True)
    for i, t in enumerate(layers):
        save_file(t, str(folder / f"layer_{i}.safetensors"))
    config = {"model_kind": "transcoder_set", "feature_input_hook": "ln2.hook_normalized",
              "feature_output_hook": "hook_mlp_out", **cfg}
    import yaml

    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def ct_reference(t: dict, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """circuit-tracer: pre = x W_enc^T + b_enc; a = pre * (pre > θ) or relu; out = a W_dec +
    b_dec + x W_skip^T."""
    xs = f64(x)
    pre = xs @ f64(t["W_enc"]).T + f64(t["b_enc"])
    theta = t.get("activation_function.threshold")
    acts = pre * (pre > f64(theta)) if theta is not None else np.maximum(pre, 0)
    out = acts @ f64(t["W_dec"]) + f64(t["b_dec"])
    if "W_skip" in t:
        out = out + xs @ f64(t["W_skip"]).T
    return acts, out


def test_planted_circuit_tracer_set_matches_reference(tmp_path: Path) -> None:
    layers = [ct_layer(10, skip=True), ct_layer(20, skip=True, jump=False)]
    folder = write_ct(tmp_path / "set", layers, model_name="meta-llama/Llama-3.2-1B")
    x = rand(30, D_IN, seed=1, scale=1.0)
    dicts = load_dictionaries(folder)
    assert [d.site for d in dicts] == [Site(0, "mlp_in"), Site(1, "mlp_in")]
    assert [d.cfg.architecture for d in dicts] == ["jumprelu", "relu"]
    assert dicts[0].cfg.model_name == "meta-llama/Llama-3.2-1B"
    for d, t in zip(dicts, layers, strict=True):
        check(d, x, *ct_reference(t, x))


def test_transcoders_list_with_narrower_output(tmp_path: Path) -> None:
    t = ct_layer(30, d_out=D_OUT)
    folder = tmp_path / "listed"
    folder.mkdir()
    save_file(t, str(folder / "weights_a.safetensors"))
    (folder / "config.yaml").write_text(
        "model_kind: transcoder_set\nfeature_input_hook: mlp.hook_in\n"
        "feature_output_hook: mlp.hook_out\ntranscoders:\n  - weights_a.safetensors\n"
    )
    d = load_sae(folder)  # a set of one layer loads without --layer
    assert d.cfg.d_target == D_OUT and d.W_dec.shape == (D_SAE, D_OUT)
    x = rand(25, D_IN, seed=2, scale=1.0)
    check(d, x, *ct_reference(t, x))


def test_layer_picks_one_of_a_set(tmp_path: Path) -> None:
    folder = write_ct(tmp_path / "set", [ct_layer(s) for s in (1, 11, 21)])
    with pytest.raises(InputError) as e:
        load_sae(folder)
    one_line(e, str(folder), "3 per-layer transcoders", "load_dictionaries", "--layer")
    d = load_sae(folder, layer=1)
    assert d.site == Site(1, "mlp_in") and d.output_site == Site(1, "mlp_out")
    torch.testing.assert_close(d.b_enc, ct_layer(11)["b_enc"])
    by_hook = load_sae(folder, site="blocks.2.ln2.hook_normalized")
    torch.testing.assert_close(by_hook.b_enc, ct_layer(21)["b_enc"])
    with pytest.raises(InputError) as e:
        load_sae(folder, layer=7)
    one_line(e, str(folder), "layers 0-2", "layer 7")
    with pytest.raises(InputError) as e:
        load_sae(folder, layer=0, site="resid_post")
    one_line(e, "is a transcoder (reads mlp_in, writes mlp_out)", "--site resid_post")


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("gap", "layer_1.safetensors is missing"),
        ("listed_missing", "nope.safetensors, which does not exist"),
        ("hf_uri", "Hugging Face hub"),
        ("decoder_shape", "tensor W_dec has shape (15, 6), expected (16, 6)"),
        ("bias_shape", "tensor b_dec has shape (4,), expected (6,)"),
        ("model_kind", "model_kind 'sae' is not supported"),
        ("hook", "feature_input_hook 'hook_resid_mid' is not a hook saedoctor reads"),
        ("negative_threshold", "negative JumpReLU thresholds"),
        ("yaml_object", "invalid YAML config"),
    ],
)
def test_circuit_tracer_bad_input_is_one_line(tmp_path: Path, case: str, needle: str) -> None:
    good = ct_layer(5)
    layers = [good, ct_layer(6)]
    cfg: dict = {}
    if case == "decoder_shape":
        layers[1] = {**layers[1], "W_dec": rand(D_SAE - 1, D_IN, seed=3)}
    if case == "bias_shape":
        layers[1] = {**layers[1], "b_dec": rand(4, seed=3)}
    if case == "negative_threshold":
        layers[1] = {**layers[1], "activation_function.threshold": -torch.ones(D_SAE)}
    if case == "model_kind":
        cfg["model_kind"] = "sae"
    if case == "hook":
        cfg["feature_input_hook"] = "hook_resid_mid"
    if case == "listed_missing":
        cfg["transcoders"] = ["layer_0.safetensors", "nope.safetensors"]
    if case == "hf_uri":
        cfg["transcoders"] = ["hf://org/repo/layer_0.safetensors"]
    folder = write_ct(tmp_path / "set", layers, **cfg)
    if case == "gap":
        save_file(good, str(folder / "layer_2.safetensors"))
        (folder / "layer_1.safetensors").unlink()
    marker = tmp_path / "ran"
    if case == "yaml_object":
        (folder / "config.yaml").write_text(
            f"model_kind: !!python/object/apply:os.system ['touch {marker}']\n"
        )
    with pytest.raises(InputError) as e:
        load_dictionaries(folder)
    one_line(e, str(folder), needle)
    assert not marker.exists()


# -- circuit-tracer: writing --------------------------------------------------------------
def transcoder(layer: int, arch: str = "jumprelu", *, skip: bool = True, seed: int = 0,
               apply_b_dec: bool = False, k: int | None = None) -> Dictionary:  # fmt: skip
    cfg = SAEConfig(arch, D_IN, D_SAE, k=k, apply_b_dec_to_input=apply_b_dec,
                    site=Site(layer, "mlp_in"), output_site=Site(layer, "mlp_out"),
                    skip=skip, model_name="tiny/llama")  # fmt: skip
    d = Dictionary(cfg)
    with torch.no_grad():
        d.W_enc.copy_(rand(D_IN, D_SAE, seed=seed))
        d.W_dec.copy_(rand(D_SAE, D_IN, seed=seed + 1))
        d.b_enc.copy_(rand(D_SAE, seed=seed + 2, scale=0.2))
        d.b_dec.copy_(rand(D_IN, seed=seed + 3, scale=0.2))
        if skip:
            d.W_skip.copy_(rand(D_IN, D_IN, seed=seed + 4, scale=0.3))
        if arch == "jumprelu":
            # Some negative: circuit-tracer's pre * (pre > θ) needs them raised to 0.
            d.threshold.copy_(rand(D_SAE, seed=seed + 5, scale=0.3))
    return d


def test_save_circuit_tracer_round_trip(tmp_path: Path) -> None:
    dicts = [transcoder(1, seed=10), transcoder(0, "relu", seed=20, apply_b_dec=True)]
    assert (dicts[0].threshold < 0).any()
    out = save_circuit_tracer(dicts, tmp_path / "ct")
    assert sorted(p.name for p in out.iterdir()) == [
        "config.yaml", "layer_0.safetensors", "layer_1.safetensors"]  # fmt: skip
    stored = load_file(str(out / "layer_1.safetensors"))
    torch.testing.assert_close(stored["W_enc"], dicts[0].W_enc.detach().T)  # [d_t, d_in]
    torch.testing.assert_close(stored["W_skip"], dicts[0].W_skip.detach().T)
    back = load_dictionaries(out)
    assert [d.site for d in back] == [Site(0, "mlp_in"), Site(1, "mlp_in")]
    assert back[0].cfg.model_name == "tiny/llama"
    x = rand(40, D_IN, seed=3, scale=1.0)
    for original, loaded in zip(sorted(dicts, key=lambda d: d.site.layer), back, strict=True):
        acts, y = run(original, x)
        check(loaded, x, acts, y)
        # What we wrote is what circuit-tracer computes from the raw files.
        raw = load_file(str(out / f"layer_{loaded.site.layer}.safetensors"))
        check(loaded, x, *ct_reference(raw, x))
    # Saving what we loaded gives the same files.
    again = save_circuit_tracer(back, tmp_path / "ct2")
    for name in ("layer_0.safetensors", "layer_1.safetensors"):
        a, b = load_file(str(out / name)), load_file(str(again / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_save_circuit_tracer_replaces_an_older_set_whole(tmp_path: Path) -> None:
    target = save_circuit_tracer([transcoder(i, seed=i) for i in range(3)], tmp_path / "ct")
    save_circuit_tracer([transcoder(0, seed=9)], target)
    assert sorted(p.name for p in target.iterdir()) == ["config.yaml", "layer_0.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["ct"]


@pytest.mark.parametrize("case", ["topk", "sae", "gap", "foreign_dir", "empty"])
def test_failed_save_writes_nothing(tmp_path: Path, case: str) -> None:
    target = tmp_path / "ct"
    dicts = [transcoder(0), transcoder(1)]
    needle = {"topk": "topk without thresholds", "sae": "is not a per-layer transcoder",
              "gap": "layers [0, 2]", "foreign_dir": "holds files other than",
              "empty": "no transcoders"}[case]  # fmt: skip
    if case == "topk":
        dicts[1] = transcoder(1, "topk", k=3)
    if case == "sae":
        dicts[1] = Dictionary(SAEConfig("relu", D_IN, D_SAE, site=Site(1, "resid_post")))
    if case == "gap":
        dicts[1] = transcoder(2)
    if case == "empty":
        dicts = []
    if case == "foreign_dir":
        target.mkdir()
        (target / "notes.txt").write_text("mine")
    with pytest.raises(InputError) as e:
        save_circuit_tracer(dicts, target)
    one_line(e, str(target), needle)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == (["ct"] if case == "foreign_dir" else [])
    if case == "foreign_dir":
        assert [p.name for p in target.iterdir()] == ["notes.txt"]


# -- Gemma Scope ----------------------------------------------------------------------------
def gemma_arrays(seed: int, d_out: int = D_IN) -> dict[str, np.ndarray]:
    return {
        "W_enc": rand(D_IN, D_SAE, seed=seed).numpy(),
        "W_dec": rand(D_SAE, d_out, seed=seed + 1).numpy(),
        "b_enc": rand(D_SAE, seed=seed + 2, scale=0.2).numpy(),
        "b_dec": rand(d_out, seed=seed + 3, scale=0.2).numpy(),
        "threshold": rand(D_SAE, seed=seed + 4, scale=0.3).abs().numpy(),
    }


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def gemma_reference(a: dict[str, np.ndarray], x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Gemma Scope: pre = x W_enc + b_enc; f = relu(pre) * (pre > θ); out = f W_dec + b_dec."""
    pre = f64(x) @ a["W_enc"].astype(np.float64) + a["b_enc"]
    acts = np.maximum(pre, 0) * (pre > a["threshold"])
    return acts, acts @ a["W_dec"].astype(np.float64) + a["b_dec"]


def test_gemma_scope_transcoder_from_repo_path(tmp_path: Path) -> None:
    arrays = gemma_arrays(40, d_out=D_OUT)
    repo = tmp_path / "models--google--gemma-scope-2b-pt-transcoders" / "snapshots" / "abc"
    path = write_npz(repo / "layer_7" / "width_16k" / "average_l0_12" / "params.npz", arrays)
    assert detect_format(path) == "gemma_scope"
    assert detect_format(path.parent) == "gemma_scope"
    d = load_sae(path)
    assert d.site == Site(7, "mlp_in") and d.output_site == Site(7, "mlp_out")
    assert d.cfg.architecture == "jumprelu" and not d.cfg.apply_b_dec_to_input
    x = rand(30, D_IN, seed=4, scale=1.0)
    check(d, x, *gemma_reference(arrays, x))
    moved = load_sae(path, layer=2)
    assert moved.site == Site(2, "mlp_in") and moved.output_site == Site(2, "mlp_out")


@pytest.mark.parametrize(("repo", "kind"), [("res", "resid_post"), ("mlp-canonical", "mlp_out"),
                                            ("att", "attn_out")])  # fmt: skip
def test_gemma_scope_sae_site_from_path(tmp_path: Path, repo: str, kind: str) -> None:
    arrays = gemma_arrays(50)
    path = write_npz(tmp_path / f"gemma-scope-9b-it-{repo}/layer_4/width_16k/canonical/params.npz",
                     arrays)  # fmt: skip
    d = load_sae(path)
    assert d.site == Site(4, kind) and not d.is_transcoder
    x = rand(30, D_IN, seed=5, scale=1.0)
    check(d, x, *gemma_reference(arrays, x))


def test_bare_npz_needs_a_site_and_mlp_in_makes_it_a_transcoder(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "weights.npz", gemma_arrays(60))
    assert load_sae(path).site is None
    d = load_sae(path, layer=3, site="mlp_in")
    assert d.site == Site(3, "mlp_in") and d.output_site == Site(3, "mlp_out")
    assert load_sae(path, layer=3).site == Site(3, "resid_post")


def lie_about_shape(path: Path, name: str) -> None:
    """Rewrite one member's .npy header to declare a huge array over the same bytes."""
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    data = members[f"{name}.npy"]
    members[f"{name}.npy"] = data.replace(b"(6, 16)", b"(600000000, 16000)".ljust(7))
    with zipfile.ZipFile(path, "w") as zf:
        for n, b in members.items():
            zf.writestr(n, b)


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("missing", "missing Gemma Scope array(s) threshold"),
        ("decoder_shape", "array W_dec has shape (15, 6), expected (16, 6)"),
        ("object", "expected floating point"),
        ("huge_header", "does not match its"),
        ("junk", "corrupt or not an .npz file"),
    ],
)
def test_gemma_scope_bad_input_is_one_line(tmp_path: Path, case: str, needle: str) -> None:
    arrays = gemma_arrays(70)
    if case == "missing":
        del arrays["threshold"]
    if case == "decoder_shape":
        arrays["W_dec"] = arrays["W_dec"][:-1]
    if case == "object":
        arrays["b_dec"] = np.array([{"a": 1}], dtype=object)
    path = tmp_path / "params.npz"
    if case == "junk":
        path.write_bytes(b"PK\x03\x04 not really a zip")
    elif case == "object":
        np.savez(path, **arrays, allow_pickle=True)
    else:
        write_npz(path, arrays)
    if case == "huge_header":
        lie_about_shape(path, "W_enc")
    with pytest.raises(InputError) as e:
        load_sae(path)
    one_line(e, str(path), needle)


# -- sparsify -------------------------------------------------------------------------------
def write_sparsify_transcoder(folder: Path, *, skip: bool) -> dict:
    folder.mkdir(parents=True)
    t = {
        "encoder.weight": rand(D_SAE, D_IN, seed=80),
        "encoder.bias": rand(D_SAE, seed=81, scale=0.2),
        "W_dec": rand(D_SAE, D_IN, seed=82),
        "b_dec": rand(D_IN, seed=83, scale=0.2),
    }
    if skip:
        t["W_skip"] = rand(D_IN, D_IN, seed=84, scale=0.3)
    save_file(t, str(folder / "sae.safetensors"))
    cfg = {"activation": "topk", "num_latents": D_SAE, "k": 4, "transcode": True,
           "skip_connection": skip, "d_in": D_IN}  # fmt: skip
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return t


@pytest.mark.parametrize("skip", [False, True])
def test_sparsify_transcoder_matches_reference(tmp_path: Path, skip: bool) -> None:
    t = write_sparsify_transcoder(tmp_path / "run" / "layers.2.mlp", skip=skip)
    d = load_sae(tmp_path / "run" / "layers.2.mlp")
    assert d.site == Site(2, "mlp_in") and d.output_site == Site(2, "mlp_out")
    assert not d.cfg.apply_b_dec_to_input and (d.W_skip is not None) == skip
    # sparsify transcode: top_k(relu(x @ enc.T + b)) (no b_dec subtraction);
    # out = acts @ W_dec + b_dec + x @ W_skip.mT
    x = rand(30, D_IN, seed=6, scale=1.0)
    xs = f64(x)
    pre = np.maximum(xs @ f64(t["encoder.weight"]).T + f64(t["encoder.bias"]), 0)
    keep = np.argsort(-pre, axis=1)[:, :4]
    acts = np.zeros_like(pre)
    np.put_along_axis(acts, keep, np.take_along_axis(pre, keep, 1), 1)
    out = acts @ f64(t["W_dec"]) + f64(t["b_dec"])
    if skip:
        out = out + xs @ f64(t["W_skip"]).T
    check(d, x, acts, out)


def test_sparsify_transcoder_on_a_whole_layer_refused(tmp_path: Path) -> None:
    write_sparsify_transcoder(tmp_path / "layers.2", skip=False)
    with pytest.raises(InputError) as e:
        load_sae(tmp_path / "layers.2")
    one_line(e, str(tmp_path / "layers.2"), "MLP transcoders only")


# -- SAELens ------------------------------------------------------------------------------
def test_saelens_metadata_table_without_version_is_6x(tmp_path: Path) -> None:
    folder = tmp_path / "sae"
    folder.mkdir()
    save_file({"W_enc": rand(D_IN, D_SAE, seed=1), "b_enc": rand(D_SAE, seed=2),
               "W_dec": rand(D_SAE, D_IN, seed=3), "b_dec": rand(D_IN, seed=4)},
              str(folder / "sae_weights.safetensors"))  # fmt: skip
    cfg = {"architecture": "standard", "d_in": D_IN, "d_sae": D_SAE,
           "metadata": {"hook_name": "blocks.3.hook_mlp_out", "model_name": "gpt2"}}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    d = load_sae(folder)
    assert d.site == Site(3, "mlp_out") and d.cfg.model_name == "gpt2"


def test_single_dictionary_formats_give_a_list_of_one(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "gemma-scope-2b-pt-res/layer_1/params.npz", gemma_arrays(90))
    dicts = load_dictionaries(path)
    assert len(dicts) == 1 and dicts[0].site == Site(1, "resid_post")


def test_fixture_files_stay_small() -> None:
    total = sum(p.stat().st_size for p in DATA.rglob("*") if p.is_file())
    assert total < 200_000
    shutil.disk_usage(DATA)  # the folder exists where tests expect it


def test_native_save_keeps_a_transcoder(tmp_path: Path) -> None:
    from saedoctor.sae.loaders import save_sae

    d = transcoder(3, seed=7)
    back = load_sae(save_sae(d, tmp_path / "native"))
    assert back.site == Site(3, "mlp_in") and back.output_site == Site(3, "mlp_out")
    assert back.W_skip is not None and back.is_transcoder
    x = rand(20, D_IN, seed=8, scale=1.0)
    check(back, x, *run(d, x))
    assert load_sae(tmp_path / "native", layer=5).output_site == Site(5, "mlp_out")
