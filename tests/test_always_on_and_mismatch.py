"""Always-on explanations and the corpus comparison, end to end on the tiny model."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import random_sae, saved_sae

from saedoctor.diagnose import DiagnoseOptions, diagnose
from saedoctor.sae.site import Site


def _hidden_mean(model_dir, corpus, layer: int) -> torch.Tensor:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from saedoctor.activations.batches import token_batches
    from saedoctor.activations.corpus import iter_documents

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    rows = []
    for b in token_batches(tok, iter_documents(str(corpus)), context=32, batch_size=4,
                           max_tokens=512):  # fmt: skip
        with torch.no_grad():
            hs = model(b.input_ids, output_hidden_states=True).hidden_states[layer + 1]
        rows.append(hs[b.counted].double())
    x = torch.cat(rows)
    return x.mean(0)


def _planted_sae(mean_x: torch.Tensor):
    sae = random_sae(64, 256, architecture="relu", site=Site(1), seed=7)
    with torch.no_grad():
        sae.b_enc.fill_(-50.0)  # everything silent except what is planted below
        sae.W_enc[:, 5] = 0.0
        sae.b_enc[5] = 5.0  # fires at exactly 5 on every token
        sae.W_dec[5] = (mean_x / mean_x.norm()).float()  # and points along mean(x)
        sae.W_enc[:, 9] = -sae.W_enc[:, 5 + 1]  # 9 is the antipode of 6
    sae.requires_grad_(False)
    return sae


def test_always_on_feature_is_explained(tiny_llama_dir, text_corpus, tmp_path):
    mean_x = _hidden_mean(tiny_llama_dir, text_corpus, 1)
    sae = _planted_sae(mean_x)
    path = saved_sae(tmp_path / "planted", sae)
    report = diagnose(DiagnoseOptions(model=str(tiny_llama_dir), saes=[str(path)],
                                      corpus=str(text_corpus), tokens=512, context=32,
                                      batch_size=4, quiet=True))  # fmt: skip
    entry = report["saes"][0]
    assert entry["metrics"]["always_on_features"] == [5]
    (exp,) = entry["always_on_explanations"]
    assert exp["feature"] == 5 and exp["density"] == 1.0
    assert exp["mean_activation"] == pytest.approx(5.0, rel=1e-6)
    assert exp["decoder_cos_with_mean"] == pytest.approx(1.0, abs=1e-5)
    assert exp["is_bias_direction"] is True
    # Only feature 5 fires, so x̂ = 5·d + b_dec and its share is 25‖d‖² / mean‖x̂‖².
    x_hat = 5 * sae.W_dec[5].double() + sae.b_dec.double()
    assert exp["reconstruction_share"] == pytest.approx(25 / float(x_hat @ x_hat), rel=1e-5)
    assert len(exp["strongest_tokens"]) == 5 and len(exp["weakest_tokens"]) == 5
    assert all(t["activation"] == pytest.approx(5.0) for t in exp["strongest_tokens"])
    assert "[[" in exp["strongest_tokens"][0]["context"]
    # The diagnosis names the always-on feature and the bias direction.
    ids = [d["id"] for d in entry["diagnoses"]]
    assert any("always_on" in i for i in ids)


def test_antipodal_partner_found():
    from saedoctor.metrics.always_on import antipodal_partner

    W = torch.randn(16, 8, dtype=torch.float64)
    W[:, 3] = -2 * W[:, 1]
    assert antipodal_partner(W, 1) == {"feature": 3, "encoder_cos": pytest.approx(-1.0)}
    W[:, 3] = torch.randn(16, dtype=torch.float64)
    W[:, 3] -= (W[:, 3] @ W[:, 1]) / (W[:, 1] @ W[:, 1]) * W[:, 1]  # orthogonal now
    assert antipodal_partner(W, 1) is None or antipodal_partner(W, 1)["feature"] != 3


def test_density_shift_known_answers():
    from saedoctor.metrics.density_shift import density_shift, jensen_shannon_bits

    a = torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=torch.float64)
    assert jensen_shannon_bits(a, a) == 0.0
    b = torch.tensor([0.0, 0.0, 0.5, 0.5], dtype=torch.float64)
    assert jensen_shannon_bits(a, b) == pytest.approx(1.0)
    shift = density_shift(a, b, 0.0005)
    assert shift["appeared"] == [2, 3] and shift["disappeared"] == [0, 1]


def test_compare_corpus_reports_deltas_and_shift(tiny_llama_dir, text_corpus, tmp_path):
    other = tmp_path / "other.jsonl"
    rows = [{"text": "x = [i * i for i in range(10)]\nprint(sum(x))\n" * 3}] * 40
    other.write_text("\n".join(json.dumps(r) for r in rows))
    path = saved_sae(tmp_path / "s", random_sae(64, 256, site=Site(1)))
    opts = DiagnoseOptions(model=str(tiny_llama_dir), saes=[str(path)], corpus=str(text_corpus),
                           compare_corpus=str(other), tokens=512, context=32, batch_size=4,
                           quiet=True)  # fmt: skip
    report = diagnose(opts)
    cmp_ = report["saes"][0]["corpus_comparison"]
    main = report["saes"][0]["metrics"]
    assert cmp_["corpus"] == str(other)
    assert cmp_["deltas"]["l0"] == pytest.approx(cmp_["metrics"]["l0"] - main["l0"])
    assert 0 < cmp_["density_jsd"] <= 1
    # Same corpus on both sides: no shift at all.
    same = diagnose(DiagnoseOptions(**{**opts.__dict__, "compare_corpus": str(text_corpus)}))
    assert same["saes"][0]["corpus_comparison"]["density_jsd"] == pytest.approx(0, abs=1e-12)
    assert same["saes"][0]["corpus_comparison"]["deltas"]["variance_explained"] == 0


def test_first_letter_absorption_block_in_report(tiny_llama_dir, text_corpus, tmp_path):
    from saedoctor.report.schema import validate_report

    path = saved_sae(tmp_path / "s", random_sae(64, 256, site=Site(1)))
    report = diagnose(
        DiagnoseOptions(
            model=str(tiny_llama_dir),
            saes=[str(path)],
            corpus=str(text_corpus),
            tokens=256,
            context=32,
            batch_size=4,
            quiet=True,
            downstream=False,
            first_letter_absorption=True,
            first_letter_words=400,
        )
    )
    entry = report["saes"][0]
    block = entry["first_letter_absorption"]
    value = block["first_letter_absorption"]
    if value is None:  # the tiny BPE vocabulary may hold too few words: the reason is given
        assert entry["not_measured"]["first_letter_absorption"] == block["reason"]
    else:
        assert 0 <= value <= 1 and entry["metrics"]["first_letter_absorption"] == value
    validate_report(report, "constructed")
