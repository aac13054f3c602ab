"""Feature cards through `diagnose` on a tiny local model, checked against an independent
float64 recomputation from HF `hidden_states`: the top contexts, their windows as text, the
logit lens and the nearest decoder rows; and which features get a card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import random_sae, saved_sae

from saedoctor.diagnose import DiagnoseOptions, diagnose
from saedoctor.diagnose.cards import MAX_FLAGGED_CARDS, choose_features, trimmed
from saedoctor.report.schema import validate_report
from saedoctor.sae.site import Site

LAYER = 1


def _reference(model_dir: Path, opts: DiagnoseOptions):
    """Every counted token's block-1 resid_post in float64, with its (sequence, position,
    token id), from HF directly; the tokenizer and the model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from saedoctor.activations.batches import token_batches
    from saedoctor.activations.corpus import iter_documents

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    rows, where, offset = [], [], 0
    for batch in token_batches(tok, iter_documents(opts.corpus), context=opts.context,
                               batch_size=opts.batch_size, max_tokens=opts.tokens):  # fmt: skip
        with torch.no_grad():
            hs = model(batch.input_ids, output_hidden_states=True).hidden_states[LAYER + 1]
        counted = batch.counted
        seq, pos = torch.nonzero(counted, as_tuple=True)
        rows.append(hs[counted].double())
        where.append(torch.stack((seq + offset, pos, batch.input_ids[counted]), 1))
        offset += batch.input_ids.shape[0]
    return torch.cat(rows), torch.cat(where), tok, model


@pytest.fixture(scope="module")
def carded(tiny_llama_dir, tmp_path_factory):
    corpus = tmp_path_factory.mktemp("cards") / "corpus.txt"
    from conftest import TINY_TEXT

    corpus.write_text("\n\n".join(TINY_TEXT * 40))
    sae = random_sae(64, 256, architecture="relu", site=Site(LAYER), seed=5)
    path = saved_sae(tmp_path_factory.mktemp("sae"), sae)
    opts = DiagnoseOptions(model=str(tiny_llama_dir), saes=[str(path)], corpus=str(corpus),
                           tokens=1024, context=32, batch_size=4, quiet=True, downstream=False,
                           preflight="none", cards=12, card_features=[3])  # fmt: skip
    report = diagnose(opts)
    return report["saes"][0], sae, _reference(tiny_llama_dir, opts)


def test_top_contexts_are_the_largest_activations_with_their_windows(carded) -> None:
    entry, sae, (x, where, tok, _) = carded
    sae.requires_grad_(False)
    f = torch.relu((x - sae.b_dec.double()) @ sae.W_enc.double() + sae.b_enc.double())
    cards = entry["cards"]["features"]
    assert len(cards) >= 12 and any(c["feature"] == 3 for c in cards)
    for card in cards:
        col = f[:, card["feature"]]
        top = card["top_contexts"]
        assert [c["activation"] for c in top] == pytest.approx(
            col.sort(descending=True).values[: len(top)].tolist(), rel=1e-4, abs=1e-5)
        assert len(top) == min(10, int((col > 0).sum()))
        best = top[0]
        row = int(((where[:, 0] == best["sequence"]) & (where[:, 1] == best["position"]))
                  .nonzero())  # fmt: skip
        assert col[row] == pytest.approx(best["activation"], rel=1e-4)
        same_seq = (where[:, 0] == best["sequence"]).nonzero().flatten()
        lo = max(int(same_seq[0]), row - 10)
        hi = min(int(same_seq[-1]), row + 5)
        assert best["tokens"] == [tok.decode([int(t)]) for t in where[lo : hi + 1, 2]]
        assert best["activations"] == pytest.approx(col[lo : hi + 1].tolist(), rel=1e-4,
                                                    abs=1e-5)  # fmt: skip
        assert best["focus"] == row - lo
        assert all(c["activation"] > 0 for c in card["random_contexts"])
        assert sum(card["histogram"]["counts"]) == int((col > 0).sum())


def test_logit_lens_and_neighbours_match_a_float64_recomputation(carded) -> None:
    entry, sae, (_, _, tok, model) = carded
    w_u = (model.lm_head.weight.double() * model.model.norm.weight.double()).T.detach()
    dec = sae.W_dec.detach().double()
    unit = dec / dec.norm(dim=1, keepdim=True)
    for card in entry["cards"]["features"]:
        i = card["feature"]
        logits = dec[i] @ w_u
        logits -= logits.mean()
        order = logits.argsort(descending=True)
        lens = card["logit_lens"]
        assert [t for t, _ in lens["top"]] == [tok.decode([int(t)]) for t in order[:10]]
        assert [t for t, _ in lens["bottom"]] == [tok.decode([int(t)]) for t in order.flip(0)[:10]]
        assert lens["top"][0][1] == pytest.approx(float(logits[order[0]]), rel=1e-4)
        cos = unit @ unit[i]
        cos[i] = -2
        nearest = cos.argsort(descending=True)[:5].tolist()
        assert [n["feature"] for n in card["neighbours"]] == nearest


def test_cards_choose_flagged_uncertain_requested_and_a_seeded_sample() -> None:
    # invented densities: 0 always-on, 1 dense, 2 alive, 3 dead, the rest alive
    density = torch.tensor([0.95, 0.3, 0.01, 0.0, *[0.02] * 96], dtype=torch.float64)
    opts = DiagnoseOptions(cards=5, card_features=[3, 2], seed=1)
    choice = choose_features(density, 0.8, [3, 7], opts)
    assert choice.why[0] == ["always_on"] and choice.why[1] == ["dense"]
    assert choice.why[3] == ["requested"] and choice.why[2] == ["requested"]
    assert choice.why[7] == ["uncertain"]  # the dead feature 3 (never fired) is not uncertain
    sampled = [f for f, why in choice.why.items() if why == ["sample"]]
    assert len(sampled) == 5 and not {0, 1, 2, 3, 7} & set(sampled)
    assert choose_features(density, 0.8, [3, 7], opts).why == choice.why  # seeded
    other = choose_features(density, 0.8, [3, 7], DiagnoseOptions(cards=5, seed=2))
    assert [f for f, w in other.why.items() if w == ["sample"]] != sampled


def test_flagged_cards_are_capped_densest_first() -> None:
    density = torch.linspace(0.2, 0.9, MAX_FLAGGED_CARDS + 10, dtype=torch.float64)
    choice = choose_features(density, 0.8, [], DiagnoseOptions(cards=0))
    assert choice.flagged_left_out == 10
    assert sorted(choice.why) == list(range(10, MAX_FLAGGED_CARDS + 10))


def test_histograms_are_trimmed_to_their_filled_bins() -> None:
    assert trimmed([0, 1, 2, 3, 4], [0, 2, 0, 1]) == ([1, 2, 3, 4], [2, 0, 1])
    assert trimmed([0, 1, 2], [0, 0]) == ([0], [])


def test_no_cards_when_turned_off(tiny_llama_dir, text_corpus, tmp_path) -> None:
    path = saved_sae(tmp_path / "s", random_sae(64, 128, site=Site(LAYER)))
    opts = DiagnoseOptions(model=str(tiny_llama_dir), saes=[str(path)], corpus=str(text_corpus),
                           tokens=256, context=32, batch_size=4, quiet=True, downstream=False,
                           preflight="none", cards=0)  # fmt: skip
    assert diagnose(opts)["saes"][0]["cards"] is None


def test_the_unembedding_folds_the_final_norm_weight(tiny_llama_dir) -> None:
    from transformers import AutoModelForCausalLM

    from saedoctor.activations.unembed import unembedding
    from saedoctor.metrics.dense_latents import UnembeddingGram

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    with torch.no_grad():  # the saved model's norm weight is all ones: make the fold visible
        model.model.norm.weight.copy_(torch.rand(64, generator=torch.Generator().manual_seed(0)))
    expected = model.lm_head.weight.detach().T * model.model.norm.weight.detach()[:, None]
    lens = unembedding(model)
    rows = torch.randn(5, 64, generator=torch.Generator().manual_seed(1))
    reference = rows.double() @ expected.double()
    assert torch.allclose(lens.logits(rows).double(), reference, atol=1e-5)
    assert lens.head.data_ptr() == model.lm_head.weight.data_ptr()  # the head is not copied
    gram = lens.gram()
    assert torch.allclose(gram, expected.double() @ expected.double().T, atol=1e-9)
    assert torch.allclose(UnembeddingGram.of(expected).gram, gram, atol=1e-9)


def test_dense_latents_carry_the_taxonomy_numbers_of_the_tokens(tiny_llama_dir, tmp_path) -> None:
    from conftest import TINY_TEXT

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(TINY_TEXT * 40))
    opts = DiagnoseOptions(model=str(tiny_llama_dir), corpus=str(corpus), tokens=1024,
                           context=32, batch_size=4, quiet=True, downstream=False,
                           preflight="none", cards=4)  # fmt: skip
    x, where, _, _ = _reference(tiny_llama_dir, opts)
    sae = random_sae(64, 128, architecture="relu", site=Site(LAYER), seed=7)
    with torch.no_grad():
        sae.b_enc += 0.3  # planted: many features fire on most tokens
        sae.W_enc[:, 0] = 0.0  # feature 0 fires on every token with activation 1 ...
        sae.b_enc[0] = 1.0
        sae.W_dec[0] = x.mean(0).float() / x.mean(0).norm()  # ... and writes the mean
    opts.saes = [str(saved_sae(tmp_path / "sae", sae))]
    report = diagnose(opts)
    validate_report(json.loads(json.dumps(report)), "the report")
    entry = report["saes"][0]
    dense = {d["feature"]: d for d in entry["dense_latents"]}
    assert dense[0]["class"] == "mean_direction"
    assert dense[0]["evidence"]["mean_cosine"] == pytest.approx(1.0, abs=1e-4)
    sae.requires_grad_(False)
    f = torch.relu((x - sae.b_dec.double()) @ sae.W_enc.double() + sae.b_enc.double())
    pos = where[:, 1].double()
    first = torch.ones(len(where), dtype=torch.bool)
    first[1:] = where[1:, 0] != where[:-1, 0]  # the first counted row of each sequence
    checked = 0
    for feature, d in dense.items():
        col = f[:, feature]
        if feature == 0 or col.std() == 0:
            continue
        r = torch.corrcoef(torch.stack((col, pos)))[0, 1]
        assert d["evidence"]["position_corr"] == pytest.approx(float(r), abs=1e-5)
        share = float(((col > 0) & first).sum().double() / (col > 0).sum().double())
        assert d["evidence"]["first_token_share"] == pytest.approx(share, abs=1e-9)
        checked += 1
    assert checked >= 3 and len(dense) == int(((f > 0).double().mean(0) > 0.1).sum())
    card_classes = {c["feature"]: c["class"] for c in entry["cards"]["features"]}
    assert card_classes[0] == "mean_direction"
