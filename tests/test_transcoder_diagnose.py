"""Transcoders through the main pass: read `mlp_in`, checked against `mlp_out`, spliced in
place of the MLP; every number against an independent float64 computation on a tiny GPT-2
whose MLP is linear (so a skip term can reproduce it exactly)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from saedoctor.activations.model import LoadedModel
from saedoctor.diagnose.entries import sae_entry
from saedoctor.diagnose.options import DiagnoseOptions
from saedoctor.diagnose.passes import run_on_model
from saedoctor.diagnose.units import SAEUnderTest, new_suite
from saedoctor.sae.model import Dictionary, SAEConfig
from saedoctor.sae.site import Site
from tiny_gpt2 import LOUD_LAYER, N_LAYERS, D, reference_batches, spliced_loss_reference

pytestmark = pytest.mark.usefixtures("one_thread")
D_T, LAYER = 48, LOUD_LAYER


def transcoder(model, *, skip: bool, seed: int = 0, planted: bool = False,
               layer: int = LAYER) -> Dictionary:  # fmt: skip
    """A relu transcoder at `layer`: random encoder / decoder; with `skip`, W_skip and b_dec
    reproduce the (affine) MLP exactly and the decoder rows are zero."""
    cfg = SAEConfig("relu", D, D_T, apply_b_dec_to_input=False, site=Site(layer, "mlp_in"),
                    output_site=Site(layer, "mlp_out"), skip=skip)  # fmt: skip
    tc = Dictionary(cfg)
    gen = torch.Generator().manual_seed(seed)
    mlp = model.transformer.h[layer].mlp
    with torch.no_grad():
        tc.W_enc.copy_(torch.randn(D, D_T, generator=gen) / math.sqrt(D))
        tc.W_dec.copy_(torch.randn(D_T, D, generator=gen) * 0.1)
        if skip:
            tc.W_dec.zero_()
            tc.W_skip.copy_(mlp.c_fc.weight @ mlp.c_proj.weight)
            tc.b_dec.copy_(mlp.c_fc.bias @ mlp.c_proj.weight + mlp.c_proj.bias)
        if planted:  # feature 0 fires on every token, feature 1 on none
            tc.W_enc[:, :2] = 0
            tc.b_enc[0], tc.b_enc[1] = 50.0, -50.0
    return tc


def run(loaded: LoadedModel, corpus, dictionaries: list[Dictionary], **changes) -> list[dict]:
    return report(loaded, corpus, dictionaries, **changes)["saes"]


def report(loaded: LoadedModel, corpus, dictionaries: list[Dictionary], path: str = "-",
           **changes) -> dict:  # fmt: skip
    """The graded report document of a run over in-memory dictionaries."""
    from saedoctor.diagnose.entries import run_metadata
    from saedoctor.health import apply_health, load_policy

    opts = DiagnoseOptions(model="tiny", corpus=str(corpus), tokens=2048, context=32,
                           batch_size=4, quiet=True, explain_tokens=256, **changes)  # fmt: skip
    units = [SAEUnderTest(f"tc{i}", path, d, new_suite(d, opts))
             for i, d in enumerate(dictionaries)]  # fmt: skip
    info = run_on_model(opts, units, loaded)
    document = {"schema": "saedoctor.report/1", "run": run_metadata(opts, info, 0.0),
                "saes": [sae_entry(u, info, opts) for u in units]}  # fmt: skip
    if info.get("transcoder_set") is not None:
        document["transcoder_set"] = info["transcoder_set"]
    apply_health(document, load_policy(None))
    return document


def transcode64(tc: Dictionary, x: torch.Tensor) -> torch.Tensor:
    """A relu transcoder's output on `x`, by hand in float64."""
    pre = x.double() @ tc.W_enc.double() + tc.b_enc.double()
    y_hat = F.relu(pre) @ tc.W_dec.double() + tc.b_dec.double()
    if tc.W_skip is not None:
        y_hat = y_hat + x.double() @ tc.W_skip.double()
    return y_hat


@torch.no_grad()
def reference(loaded: LoadedModel, corpus, tc: Dictionary) -> dict[str, float]:
    """Float64 by hand: hooks on the MLP, the transcoder applied row by row, CE / KL of the
    model with the MLP output replaced and zeroed."""
    model, mlp = loaded.model, loaded.model.transformer.h[LAYER].mlp
    batches = reference_batches(loaded, corpus)
    ys, yhats, ce = [], [], {"clean": [], "tc": [], "zero": []}
    kls: dict[str, list] = {"tc": [], "zero": []}
    for batch in batches:
        ids, counted = batch.input_ids, batch.counted
        seen: dict[str, torch.Tensor] = {}
        hook = mlp.register_forward_hook(lambda m, a, o, seen=seen: seen.update(x=a[0], y=o))
        clean = model(input_ids=ids).logits.double()
        hook.remove()
        x, y = seen["x"].double(), seen["y"].double()
        y_hat = transcode64(tc, x)
        ys.append(y[counted])
        yhats.append(y_hat[counted])
        logp = {"clean": clean.log_softmax(-1)}
        for name, out in (("tc", y_hat.float()), ("zero", torch.zeros_like(seen["y"]))):
            h = mlp.register_forward_hook(lambda m, a, o, out=out: out)
            logp[name] = model(input_ids=ids).logits.double().log_softmax(-1)
            h.remove()
        target = ids[:, 1:]
        mask = counted[:, :-1] & batch.real()[:, 1:]
        for name, lp in logp.items():
            nll = -lp[:, :-1].gather(-1, target[..., None])[..., 0]
            ce[name].append(nll[mask])
        p = logp["clean"].exp()
        for name in kls:
            kls[name].append((p * (logp["clean"] - logp[name])).sum(-1)[counted])
    y, y_hat = torch.cat(ys), torch.cat(yhats)
    sse = (y - y_hat).pow(2).sum()
    ces = {k: float(torch.cat(v).mean()) for k, v in ce.items()}
    return {
        "variance_explained": float(1 - sse / (y - y.mean(0)).pow(2).sum()),
        "error_share": float(sse / y.pow(2).sum()),
        "ce_clean": ces["clean"], "ce_sae": ces["tc"], "ce_ablated": ces["zero"],
        "loss_recovered": (ces["zero"] - ces["tc"]) / (ces["zero"] - ces["clean"]),
        "kl_sae": float(torch.cat(kls["tc"]).mean()),
        "kl_ablated": float(torch.cat(kls["zero"]).mean()),
    }  # fmt: skip


def test_a_transcoder_matches_a_float64_reference(linear_gpt2, text_corpus) -> None:
    tc = transcoder(linear_gpt2.model, skip=False)
    (entry,) = run(linear_gpt2, text_corpus, [tc])
    ref = reference(linear_gpt2, text_corpus, tc)
    metrics = entry["metrics"]
    for key, want in ref.items():
        assert metrics[key] == pytest.approx(want, rel=1e-4, abs=1e-5), key
    assert metrics["ce_sae"] != pytest.approx(metrics["ce_clean"], abs=1e-3)  # a real splice
    assert entry["config"]["kind"] == "transcoder"
    assert entry["site"]["kind"] == "mlp_in" and entry["site"]["output"]["kind"] == "mlp_out"


def test_a_skip_term_that_is_the_mlp_recovers_all_the_loss(linear_gpt2, text_corpus) -> None:
    tc = transcoder(linear_gpt2.model, skip=True)
    (entry,) = run(linear_gpt2, text_corpus, [tc])
    m = entry["metrics"]
    assert m["loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert m["kl_sae"] == pytest.approx(0.0, abs=1e-6)
    assert m["variance_explained"] == pytest.approx(1.0, abs=1e-5)
    assert m["error_share"] == pytest.approx(0.0, abs=1e-6)
    # Without the skip term the decoder (zero rows) writes only b_dec: the MLP's mean-ish
    # offset, far from its output.
    assert m["variance_explained_without_skip"] < 0.5
    ref = reference(linear_gpt2, text_corpus, tc)
    assert m["ce_ablated"] == pytest.approx(ref["ce_ablated"], rel=1e-4)


def test_planted_always_on_and_dead_features_are_exactly_those(linear_gpt2, text_corpus) -> None:
    tc = transcoder(linear_gpt2.model, skip=False, planted=True)
    (entry,) = run(linear_gpt2, text_corpus, [tc], downstream=False)
    density = torch.tensor(entry["feature_density"])
    assert entry["metrics"]["always_on_features"] == [0]
    assert torch.nonzero(density < 0.0005).flatten().tolist() == [1]
    assert density[0] == 1.0 and entry["metrics"]["dead_count"] == 1


def test_several_transcoders_and_an_sae_share_one_pass(linear_gpt2, text_corpus) -> None:
    """Each dictionary in a mixed run gets what it gets alone."""
    tc = transcoder(linear_gpt2.model, skip=False)
    sae = Dictionary(SAEConfig("relu", D, D_T, site=Site(2, "resid_post")))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(D, D_T, generator=torch.Generator().manual_seed(3)))
        sae.W_dec.copy_(sae.W_enc.T * 0.05)
    together = run(linear_gpt2, text_corpus, [tc, sae])
    alone = [run(linear_gpt2, text_corpus, [d])[0] for d in (tc, sae)]
    for both, one in zip(together, alone, strict=True):
        for key in ("variance_explained", "loss_recovered", "kl_sae", "l0", "dead_count"):
            assert both["metrics"][key] == pytest.approx(one["metrics"][key], rel=1e-6), key


def test_filter_hands_circuit_tracer_a_per_layer_exclusion_list_and_mask(
    linear_gpt2, text_corpus, tmp_path
) -> None:
    import json

    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from saedoctor.cli import app
    from saedoctor.report.document import write_report

    planted = [transcoder(linear_gpt2.model, skip=False, planted=True, layer=layer, seed=layer)
               for layer in (0, 2)]  # fmt: skip
    document = report(linear_gpt2, text_corpus, planted, downstream=False)
    write_report(document, tmp_path / "run.json")
    out = tmp_path / "ct"
    result = CliRunner().invoke(app, ["filter", str(tmp_path / "run.json"), "--format",
                                      "circuit-tracer", "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    listed = json.loads((out / "exclude.json").read_text())
    # Feature 0 at layers 0 and 2, nothing at layer 1 (no transcoder there): never a union;
    # each with the dense-latent class its entry gives it.
    classes = [{d["feature"]: d["class"] for d in e["dense_latents"]}[0]
               for e in document["saes"]]  # fmt: skip
    assert listed["exclude"] == {"0": [{"id": 0, "density": 1.0, "class": classes[0]}], "1": [],
                                 "2": [{"id": 0, "density": 1.0, "class": classes[1]}]}  # fmt: skip
    mask = load_file(str(out / "exclude_mask.safetensors"))["exclude"]
    assert mask.shape == (N_LAYERS, D_T) and mask.dtype == torch.bool
    assert torch.nonzero(mask).tolist() == [[0, 0], [2, 0]]


def test_filter_circuit_tracer_refuses_a_report_without_transcoders(
    linear_gpt2, text_corpus, tmp_path
) -> None:
    from typer.testing import CliRunner

    from saedoctor.cli import app
    from saedoctor.report.document import write_report

    sae = Dictionary(SAEConfig("relu", D, D_T, site=Site(2, "resid_post")))
    write_report(report(linear_gpt2, text_corpus, [sae], downstream=False), tmp_path / "r.json")
    result = CliRunner().invoke(app, ["filter", str(tmp_path / "r.json"), "--format",
                                      "circuit-tracer", "--out", str(tmp_path / "ct")])  # fmt: skip
    assert result.exit_code == 2
    assert "no transcoder in this report" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "ct").exists()


def replacement_model_reference(loaded: LoadedModel, corpus, tcs: list[Dictionary]) -> dict:
    """Float64 CE / KL of the model with every transcoder's MLP replaced in one forward (each
    transcoder reads the MLP input of that run), and with all those MLPs zeroed."""
    by_layer = {tc.site.layer: tc for tc in tcs}
    return spliced_loss_reference(loaded, corpus, {
        layer: lambda layer, live, clean: transcode64(by_layer[layer], live[layer])
        for layer in by_layer})  # fmt: skip


def test_a_transcoder_set_spliced_whole_matches_a_replacement_model(
    linear_gpt2, text_corpus
) -> None:
    tcs = [transcoder(linear_gpt2.model, skip=False, layer=layer, seed=layer)
           for layer in (0, 2)]  # fmt: skip
    document = report(linear_gpt2, text_corpus, tcs)
    whole = document["transcoder_set"]
    assert whole["layers"] == [0, 2]
    ref = replacement_model_reference(linear_gpt2, text_corpus, tcs)
    for key, want in ref.items():
        assert whole["metrics"][key] == pytest.approx(want, rel=1e-4, abs=1e-5), key
    # Spliced together, the errors of the two compound: not what either costs alone.
    alone = [e["metrics"]["ce_sae"] for e in document["saes"]]
    assert all(whole["metrics"]["ce_sae"] != pytest.approx(a, abs=1e-3) for a in alone)


def test_an_exact_transcoder_set_recovers_all_the_loss(linear_gpt2, text_corpus) -> None:
    tcs = [transcoder(linear_gpt2.model, skip=True, layer=layer) for layer in (0, 1, 2)]
    metrics = report(linear_gpt2, text_corpus, tcs)["transcoder_set"]["metrics"]
    assert metrics["loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert metrics["kl_sae"] == pytest.approx(0.0, abs=1e-6)


def test_every_view_shows_the_set_and_validates(linear_gpt2, text_corpus) -> None:
    from rich.console import Console

    from saedoctor.report.fields import format_metric
    from saedoctor.report.html import render_html
    from saedoctor.report.markdown import render_markdown
    from saedoctor.report.schema import validate_report
    from saedoctor.report.terminal import print_report

    tcs = [transcoder(linear_gpt2.model, skip=True, layer=layer) for layer in (0, 2)]
    document = report(linear_gpt2, text_corpus, tcs)
    validate_report(document, "run.json")
    shown = format_metric("loss_recovered", document["transcoder_set"]["metrics"]["loss_recovered"])
    console = Console(record=True, width=160)
    print_report(document, console)
    for text in (console.export_text(), render_markdown(document), render_html(document)):
        assert "transcoder set, spliced in together" in text.lower()
        assert "layers 0, 2" in text and shown in text


def test_fold_moves_an_always_on_feature_into_b_dec_at_no_cost(
    linear_gpt2, text_corpus, tmp_path
) -> None:
    """A planted always-on feature that fires at a constant 50 on every token: folding it at
    its measured mean is exact, so the folded set reconstructs and splices exactly as the
    original, with no always-on feature left."""
    from typer.testing import CliRunner

    from saedoctor.cli import app
    from saedoctor.report.document import write_report
    from saedoctor.sae.loaders import load_dictionaries, save_circuit_tracer

    planted = [transcoder(linear_gpt2.model, skip=False, planted=True, layer=layer, seed=layer)
               for layer in range(N_LAYERS)]  # fmt: skip
    save_circuit_tracer(planted, tmp_path / "set")
    original = load_dictionaries(tmp_path / "set")
    before = report(linear_gpt2, text_corpus, original, path=str(tmp_path / "set"))
    write_report(before, tmp_path / "run.json")
    result = CliRunner().invoke(app, ["filter", str(tmp_path / "run.json"), "--format",
                                      "circuit-tracer", "--out", str(tmp_path / "ct"),
                                      "--fold"])  # fmt: skip
    assert result.exit_code == 0, result.output
    folded = load_dictionaries(tmp_path / "ct" / "folded")
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(5))
    for old, new in zip(original, folded, strict=True):
        assert torch.allclose(new(x)[0], old(x)[0], atol=1e-4)
        assert not new.encode(x).dense()[:, 0].any()  # feature 0 is gone
        assert torch.allclose(new.b_dec, old.b_dec + 50.0 * old.W_dec[0], atol=1e-4)
    after = report(linear_gpt2, text_corpus, folded, path=str(tmp_path / "ct" / "folded"))
    for b, a in zip(before["saes"], after["saes"], strict=True):
        assert b["metrics"]["always_on_count"] == 1 and a["metrics"]["always_on_count"] == 0
        for key in ("variance_explained", "loss_recovered"):
            # float32 outputs of norm ~1e3: the folded b_dec sums in another order
            assert a["metrics"][key] == pytest.approx(b["metrics"][key], rel=1e-5), key


def test_fold_needs_the_circuit_tracer_format_and_a_directory(tmp_path) -> None:
    from typer.testing import CliRunner

    from saedoctor.cli import app

    (tmp_path / "run.json").write_text("{}")
    result = CliRunner().invoke(app, ["filter", str(tmp_path / "run.json"), "--fold"])
    assert result.exit_code == 2 and "--fold" in result.output
