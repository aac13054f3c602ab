"""Cross-layer transcoders through diagnose: loaded from circuit-tracer's layout, fed in the
main pass (every layer's reconstruction from all encoders at or below it), checked against a
float64 computation with hooks on a tiny GPT-2's MLPs and the full W_dec tensors; the loss
with the CLT spliced in (every block at once, and one block at a time) against a float64
replacement model."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from saedoctor.activations.model import LoadedModel
from saedoctor.cli import app
from saedoctor.diagnose.entries import run_metadata, sae_entry
from saedoctor.diagnose.options import DiagnoseOptions
from saedoctor.diagnose.passes import run_on_model
from saedoctor.diagnose.units import clt_units
from saedoctor.errors import InputError
from saedoctor.sae.loaders import load_clt, load_sae
from tiny_gpt2 import N_LAYERS, D, reference_batches, spliced_loss_reference

pytestmark = pytest.mark.usefixtures("one_thread")
D_T = 24
DATA = Path(__file__).parent / "data" / "circuit_tracer"
CONFIG = ("model_kind: cross_layer_transcoder\nfeature_input_hook: mlp.hook_in\n"
          "feature_output_hook: mlp.hook_out\n")  # fmt: skip


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


def clt_output(t: dict[str, torch.Tensor], layer: int,
               xs: dict[int, torch.Tensor]) -> torch.Tensor:  # fmt: skip
    """Float64 `y_hat_l = b_dec_l + sum_{i <= l} relu(x_i W_enc_i^T + b_enc_i) @ W_dec_i[:, l - i]`
    from the MLP inputs `xs[i]` of blocks 0..l, with the full W_dec tensors."""
    y_hat = t[f"b_dec_{layer}"].double()
    for i in range(layer + 1):
        a = F.relu(xs[i].double() @ t[f"W_enc_{i}"].double().T + t[f"b_enc_{i}"].double())
        y_hat = y_hat + a @ t[f"W_dec_{i}"][:, layer - i].double()
    return y_hat


@torch.no_grad()
def reference(loaded: LoadedModel, corpus: Path, t: dict[str, torch.Tensor]) -> list[dict]:
    """Float64 by hand: every MLP's input and output hooked, y_hat_l from the full W_dec."""
    mlps = [b.mlp for b in loaded.model.transformer.h]
    ys: list[list] = [[] for _ in mlps]
    yhats: list[list] = [[] for _ in mlps]
    for batch in reference_batches(loaded, corpus):
        seen: dict[int, tuple] = {}
        hooks = [m.register_forward_hook(
            lambda m, a, o, i=i, seen=seen: seen.update({i: (a[0], o)})
        ) for i, m in enumerate(mlps)]  # fmt: skip
        loaded.model(input_ids=batch.input_ids)
        for h in hooks:
            h.remove()
        xs = {i: x for i, (x, _) in seen.items()}
        for layer in range(N_LAYERS):
            ys[layer].append(seen[layer][1].double()[batch.counted])
            yhats[layer].append(clt_output(t, layer, xs)[batch.counted])
    out = []
    for layer in range(N_LAYERS):
        y, y_hat = torch.cat(ys[layer]), torch.cat(yhats[layer])
        sse = float((y - y_hat).pow(2).sum())
        out.append(
            {
                "sse": sse,
                "energy": float(y.pow(2).sum()),
                "variance_explained": 1 - sse / float((y - y.mean(0)).pow(2).sum()),
            }
        )
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
        doc["saes"][0]["metrics"]["error_share"], rel=1e-3
    )


def test_planted_always_on_and_dead_features_per_layer(linear_gpt2, text_corpus,
                                                       tmp_path) -> None:  # fmt: skip
    doc = report(linear_gpt2, text_corpus, write_clt(clt_tensors(1), tmp_path / "clt"),
                 downstream=False)  # fmt: skip
    for layer, entry in enumerate(doc["saes"]):
        density = torch.tensor(entry["feature_density"])
        assert entry["metrics"]["always_on_features"] == [2 * layer]
        assert torch.nonzero(density == 0).flatten().tolist() == [2 * layer + 1]


def spliced_clt_reference(loaded: LoadedModel, corpus: Path, t: dict[str, torch.Tensor],
                          layers: list[int], read: str) -> dict[str, float]:  # fmt: skip
    """Float64 CE / KL with the MLP output of each block in `layers` replaced by the CLT's
    output there, its encoders reading the MLP inputs of the `read` run ("live": the spliced
    run itself; "clean": the unpatched run), against zeroing those MLPs."""
    return spliced_loss_reference(loaded, corpus, {
        layer: lambda layer, live, clean: clt_output(t, layer, live if read == "live" else clean)
        for layer in layers})  # fmt: skip


CE_TOL, KL_TOL = 1e-7, 2e-8  # nats; measured against float64: at most 1.6e-8 and 8.4e-9


def assert_downstream_matches(metrics: dict, ref: dict[str, float]) -> None:
    """The report (float32 forwards, float64 sums) against the float64 reference. CE means of
    ~6 nats agree to within CE_TOL (a relative 2e-8), KL means to within KL_TOL or 1e-4
    relative; the two ratios are held to 1e-4 relative plus what their inputs' tolerances
    allow (this model's layer 2 MLP moves CE by only 6e-5 nats when zeroed)."""
    assert metrics["downstream_tokens"] == ref["downstream_tokens"]
    for key in ("ce_clean", "ce_sae", "ce_ablated"):
        assert metrics[key] == pytest.approx(ref[key], rel=0, abs=CE_TOL), key
    for key in ("kl_sae", "kl_ablated"):
        assert metrics[key] == pytest.approx(ref[key], rel=1e-4, abs=KL_TOL), key
    lr, gap = ref["loss_recovered"], ref["ce_ablated"] - ref["ce_clean"]
    slack = CE_TOL * 2 * (1 + abs(lr)) / abs(gap)
    assert metrics["loss_recovered"] == pytest.approx(lr, rel=1e-4, abs=slack)
    ks = ref["kl_score"]  # 1 - kl_sae / kl_ablated
    slack = KL_TOL * (2 + abs(ks)) / ref["kl_ablated"]
    assert metrics["kl_score"] == pytest.approx(ks, rel=1e-4, abs=slack)


def test_spliced_clt_loss_matches_a_float64_replacement_model(linear_gpt2, text_corpus,
                                                              tmp_path) -> None:  # fmt: skip
    t = clt_tensors(2)
    doc = report(linear_gpt2, text_corpus, write_clt(t, tmp_path / "clt"))
    (section,) = doc["cross_layer_transcoder"]
    # Every block spliced at once, as diagnose/clt.py's `_replacers` define it (through
    # transcoder_set.splice_whole, as a transcoder set is): block l's encoder reads block l's
    # MLP input *in the spliced run*, the stream the CLT's outputs below l already changed;
    # y_hat_l takes the codes of blocks 0..l from that same run. All three MLPs zeroed is the
    # ablation.
    whole = spliced_clt_reference(linear_gpt2, text_corpus, t, list(range(N_LAYERS)), "live")
    assert_downstream_matches(section["metrics"], whole)
    # Encoders reading the clean run's MLP inputs instead would be another number.
    frozen = spliced_clt_reference(linear_gpt2, text_corpus, t, list(range(N_LAYERS)), "clean")
    assert section["metrics"]["ce_sae"] != pytest.approx(frozen["ce_sae"], abs=100 * CE_TOL)
    # One block at a time (diagnose/model_pass.py `_clt_downstream`): block l's MLP output
    # alone replaced by y_hat_l from the clean inputs of blocks 0..l (the spliced run's own
    # inputs too: nothing below l changed), and block l's MLP alone zeroed.
    for layer, entry in enumerate(doc["saes"]):
        one = spliced_clt_reference(linear_gpt2, text_corpus, t, [layer], "clean")
        assert_downstream_matches(entry["metrics"], one)
        assert entry["metrics"]["ce_sae"] != pytest.approx(whole["ce_sae"], abs=100 * CE_TOL)
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
