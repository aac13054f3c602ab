"""Cross-layer transcoders through diagnose: loaded from circuit-tracer's layout, fed in the
main pass (every layer's reconstruction from all encoders at or below it), checked against a
float64 computation with hooks on a tiny GPT-2's MLPs and the full W_dec tensors."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from conftest import build_tiny_tokenizer
from saedoctor.activations.model import LoadedModel
from saedoctor.cli import app
from saedoctor.diagnose.entries import run_metadata, sae_entry
from saedoctor.diagnose.options import DiagnoseOptions
from saedoctor.diagnose.passes import run_on_model
from saedoctor.diagnose.units import clt_units
from saedoctor.errors import InputError
from saedoctor.sae.loaders import load_clt, load_sae

pytestmark = pytest.mark.usefixtures("one_thread")
D, D_T, N_LAYERS = 32, 24, 3
DATA = Path(__file__).parent / "data" / "circuit_tracer"
CONFIG = ("model_kind: cross_layer_transcoder\nfeature_input_hook: mlp.hook_in\n"
          "feature_output_hook: mlp.hook_out\n")  # fmt: skip


@pytest.fixture(scope="module")
def linear_gpt2() -> LoadedModel:
    """GPT-2 with an identity activation, so each MLP is affine."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = build_tiny_tokenizer()
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=D, n_layer=N_LAYERS, n_head=4,
                        n_positions=128, activation_function="linear",
                        bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    torch.manual_seed(0)
    return LoadedModel(GPT2LMHeadModel(config).eval().requires_grad_(False), tokenizer,
                       "tiny-linear-gpt2", N_LAYERS, D)  # fmt: skip


def clt_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    """circuit-tracer-named tensors; in layer i, feature 2i fires on every token, 2i+1 never."""
    gen = torch.Generator().manual_seed(seed)
    t: dict[str, torch.Tensor] = {}
    for i in range(N_LAYERS):
        w_enc = torch.randn(D_T, D, generator=gen) / math.sqrt(D)
        b_enc = torch.randn(D_T, generator=gen) * 0.1
        w_enc[2 * i : 2 * i + 2] = 0
        b_enc[2 * i], b_enc[2 * i + 1] = 50.0, -50.0
        t |= {f"W_enc_{i}": w_enc, f"b_enc_{i}": b_enc,
              f"b_dec_{i}": torch.randn(D, generator=gen) * 0.1,
              f"W_dec_{i}": torch.randn(D_T, N_LAYERS - i, D, generator=gen) * 0.05}  # fmt: skip
    return t


def write_clt(tensors: dict[str, torch.Tensor], directory: Path) -> Path:
    """circuit-tracer's on-disk layout (CrossLayerTranscoder.to_safetensors + config.yaml)."""
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(N_LAYERS):
        enc = {k: tensors[f"{k}_{i}"].contiguous() for k in ("W_enc", "b_enc", "b_dec")}
        save_file({f"{k}_{i}": v for k, v in enc.items()},
                  str(directory / f"W_enc_{i}.safetensors"))  # fmt: skip
        save_file({f"W_dec_{i}": tensors[f"W_dec_{i}"].contiguous()},
                  str(directory / f"W_dec_{i}.safetensors"))  # fmt: skip
    (directory / "config.yaml").write_text(CONFIG)
    return directory


def report(loaded: LoadedModel, corpus: Path, path: Path, **changes) -> dict:
    opts = DiagnoseOptions(model="tiny", corpus=str(corpus), tokens=2048, context=32,
                           batch_size=4, quiet=True, explain_tokens=256, **changes)  # fmt: skip
    units = clt_units(load_clt(path), str(path), opts)
    info = run_on_model(opts, units, loaded)
    return {"schema": "saedoctor.report/1", "run": run_metadata(opts, info, 0.0),
            "saes": [sae_entry(u, info, opts) for u in units],
            "cross_layer_transcoder": info["cross_layer_transcoder"]}  # fmt: skip


@torch.no_grad()
def reference(loaded: LoadedModel, corpus: Path, t: dict[str, torch.Tensor]) -> list[dict]:
    """Float64 by hand: every MLP's input and output hooked, y_hat_l from the full W_dec."""
    from saedoctor.activations.batches import token_batches
    from saedoctor.activations.corpus import iter_documents

    mlps = [b.mlp for b in loaded.model.transformer.h]
    batches = token_batches(loaded.tokenizer, iter_documents(str(corpus)), context=32,
                            batch_size=4, max_tokens=2048)  # fmt: skip
    ys: list[list] = [[] for _ in mlps]
    yhats: list[list] = [[] for _ in mlps]
    for batch in batches:
        seen: dict[int, tuple] = {}
        hooks = [m.register_forward_hook(
            lambda m, a, o, i=i, seen=seen: seen.update({i: (a[0], o)})
        ) for i, m in enumerate(mlps)]  # fmt: skip
        loaded.model(input_ids=batch.input_ids)
        for h in hooks:
            h.remove()
        acts = [F.relu(seen[i][0].double() @ t[f"W_enc_{i}"].double().T
                       + t[f"b_enc_{i}"].double()) for i in range(N_LAYERS)]  # fmt: skip
        for layer in range(N_LAYERS):
            y_hat = t[f"b_dec_{layer}"].double() + sum(
                acts[i] @ t[f"W_dec_{i}"][:, layer - i].double() for i in range(layer + 1))
            ys[layer].append(seen[layer][1].double()[batch.counted])
            yhats[layer].append(y_hat[batch.counted])
    out = []
    for layer in range(N_LAYERS):
        y, y_hat = torch.cat(ys[layer]), torch.cat(yhats[layer])
        sse = float((y - y_hat).pow(2).sum())
        out.append({"sse": sse, "energy": float(y.pow(2).sum()),
                    "variance_explained": 1 - sse / float((y - y.mean(0)).pow(2).sum())})
    return out


def test_each_layer_is_the_full_clt_output_against_float64(linear_gpt2, text_corpus,
                                                            tmp_path) -> None:  # fmt: skip
    t = clt_tensors()
    doc = report(linear_gpt2, text_corpus, write_clt(t, tmp_path / "clt"), downstream=False)
    ref = reference(linear_gpt2, text_corpus, t)
    (section,) = doc["cross_layer_transcoder"]
    for layer, (entry, row) in enumerate(zip(doc["saes"], section["layers"], strict=True)):
        m = entry["metrics"]
        assert m["variance_explained"] == pytest.approx(ref[layer]["variance_explained"],
                                                        rel=1e-4, abs=1e-5)  # fmt: skip
        share = ref[layer]["sse"] / ref[layer]["energy"]
        assert m["error_share"] == pytest.approx(share, rel=1e-4)
        assert row["error_share"] == pytest.approx(share, rel=1e-4)
        assert row["fvu"] == pytest.approx(1 - ref[layer]["variance_explained"], rel=1e-3)
    pooled = sum(r["sse"] for r in ref) / sum(r["energy"] for r in ref)
    assert section["error_share"] == pytest.approx(pooled, rel=1e-4)
    assert section["not_measured"]["loss_recovered"]
    # layers above 0 take the lower layers' decoders: the own-layer slice alone differs
    assert doc["saes"][2]["metrics"]["error_share"] != pytest.approx(
        doc["saes"][0]["metrics"]["error_share"], rel=1e-3)


def test_planted_always_on_and_dead_features_per_layer(linear_gpt2, text_corpus,
                                                       tmp_path) -> None:  # fmt: skip
    doc = report(linear_gpt2, text_corpus, write_clt(clt_tensors(1), tmp_path / "clt"),
                 downstream=False)  # fmt: skip
    for layer, entry in enumerate(doc["saes"]):
        density = torch.tensor(entry["feature_density"])
        assert entry["metrics"]["always_on_features"] == [2 * layer]
        assert torch.nonzero(density == 0).flatten().tolist() == [2 * layer + 1]


def test_spliced_clt_loss_is_measured(linear_gpt2, text_corpus, tmp_path) -> None:
    doc = report(linear_gpt2, text_corpus, write_clt(clt_tensors(2), tmp_path / "clt"))
    (section,) = doc["cross_layer_transcoder"]
    m = section["metrics"]
    assert m["ce_clean"] <= m["ce_ablated"] and m["kl_sae"] > 0
    for entry in doc["saes"]:
        assert entry["metrics"]["loss_recovered"] is not None
    _every_view_shows(doc, section)


def _every_view_shows(doc: dict, section: dict) -> None:
    from rich.console import Console

    from saedoctor.report.fields import format_metric
    from saedoctor.report.html import render_html
    from saedoctor.report.markdown import render_markdown
    from saedoctor.report.terminal import print_report

    console = Console(record=True, width=160)
    print_report(doc, console)
    pooled = format_metric("error_share", section["error_share"])
    for text in (console.export_text(), render_markdown(doc), render_html(doc)):
        assert "cross-layer transcoder" in text and f"pooled error share {pooled}" in text


def test_circuit_tracer_written_clt_matches_its_encode_decode() -> None:
    """`recon_i` is circuit-tracer's own decode (clt_out.safetensors keeps only those, to stay
    small); the codes are checked against its JumpReLU formula in float64."""
    clt = load_clt(DATA / "clt")
    inputs = load_file(str(DATA / "inputs.safetensors"))
    expected = load_file(str(DATA / "clt_out.safetensors"))
    codes = clt.encode_all({i: inputs[f"x_{i}"] for i in range(clt.n_layers)})
    for i in range(clt.n_layers):
        file = DATA / "clt" / f"W_enc_{i}.safetensors"
        raw = {k: v.double() for k, v in load_file(str(file)).items()}
        pre = inputs[f"x_{i}"].double() @ raw[f"W_enc_{i}"].T + raw[f"b_enc_{i}"]
        acts = pre * (pre > raw[f"threshold_{i}"])
        assert int((acts > 0).sum()) > 0
        torch.testing.assert_close(codes[i].dense().double(), acts, atol=1e-5, rtol=1e-5)
    for layer, y_hat in clt.reconstruct_all(codes):
        torch.testing.assert_close(y_hat, expected[f"recon_{layer}"], atol=1e-5, rtol=1e-5)
    assert all(e.W_enc.dtype == torch.float32 for e in clt.encoders)


def test_load_sae_on_a_clt_points_at_load_clt() -> None:
    with pytest.raises(InputError) as e:
        load_sae(DATA / "clt")
    assert "load_clt" in str(e.value) and "\n" not in str(e.value)


def broken(tmp_path: Path, how: str) -> tuple[Path, str]:
    """A copy of the fixture with one fault; returns it and the file the error must name."""
    d = Path(shutil.copytree(DATA / "clt", tmp_path / "clt"))
    if how == "gap":
        (d / "W_enc_1.safetensors").unlink()
        (d / "W_dec_1.safetensors").unlink()
        return d, "W_enc_1.safetensors"
    if how == "missing_dec":
        (d / "W_dec_2.safetensors").unlink()
        return d, "W_dec_2.safetensors"
    enc = load_file(str(d / "W_enc_1.safetensors"))
    enc["W_enc_1"] = enc["W_enc_1"][:-1].contiguous()
    save_file(enc, str(d / "W_enc_1.safetensors"))
    return d, "W_enc_1.safetensors"


@pytest.mark.parametrize("how", ["gap", "missing_dec", "shape"])
def test_bad_clt_folders_are_one_line_exit_2(tmp_path, how) -> None:
    d, name = broken(tmp_path, how)
    with pytest.raises(InputError) as e:
        load_clt(d)
    assert name in str(e.value) and "\n" not in str(e.value)
    result = CliRunner().invoke(app, ["diagnose", "--quiet", "--sae", str(d),
                                      "--out", str(tmp_path / "r.json")])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert name in result.output
