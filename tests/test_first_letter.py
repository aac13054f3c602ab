"""SAEBench first-letter absorption: a synthetic setting with a known answer, the pieces of
SAEBench's arithmetic, and the model-facing wrapper end to end on the tiny Llama."""

from __future__ import annotations

import json
import math

import pytest
import torch

from saedoctor.errors import InputError
from saedoctor.metrics.first_letter import (
    FirstLetterSettings,
    _pack,
    absorption_from_activations,
    alpha_vocabulary,
    first_letter_absorption,
)
from saedoctor.metrics.first_letter_core import LETTERS, _split_feats, _word_absorption
from saedoctor.metrics.first_letter_probe import f1_score, fit_balanced_logreg
from saedoctor.sae.model import SAEConfig, build_sae
from saedoctor.sae.site import Site

D = 64
N_TRAIN, N_TEST, N_ABSORBED = 20, 8, 6


def _synthetic(seed: int = 0):
    """Words whose activation is their letter's direction plus noise; an SAE whose latents are
    the letter directions, except that 6 test words of 'a' each fire their own absorbing
    latent (decoder = letter direction + word direction) while the main 'a' latent is silent.
    """
    g = torch.Generator().manual_seed(seed)
    eye = torch.eye(D)
    letter_dir = eye[:26]
    word_dir = eye[26 : 26 + N_ABSORBED]
    acts, words, train = [], [], []
    for li, letter in enumerate(LETTERS):
        for i in range(N_TRAIN + N_TEST):
            acts.append(letter_dir[li])
            words.append(f"{letter}word{i}")
            train.append(i < N_TRAIN)
    for j in range(N_ABSORBED):
        acts.append(letter_dir[0] + word_dir[j])
        words.append(f"absorbed{j}")
        train.append(False)
    x = torch.stack(acts) + 0.02 * torch.randn(len(acts), D, generator=g)

    d_sae = 26 + N_ABSORBED
    W_enc = torch.zeros(D, d_sae)
    b_enc = torch.full((d_sae,), -0.2)
    W_dec = torch.zeros(d_sae, D)
    W_enc[:, :26] = letter_dir.T
    W_enc[:, 0] -= 2 * word_dir.sum(0)  # the main 'a' latent stays silent on absorbed words
    W_dec[:26] = letter_dir
    for j in range(N_ABSORBED):
        W_enc[:, 26 + j] = 2 * word_dir[j]
        b_enc[26 + j] = -1.0
        W_dec[26 + j] = (letter_dir[0] + word_dir[j]) / math.sqrt(2)
    cfg = SAEConfig("relu", d_in=D, d_sae=d_sae, apply_b_dec_to_input=False)
    tensors = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": torch.zeros(D)}
    sae = build_sae(cfg, tensors, "synthetic")
    return x, words, torch.tensor(train), sae


def test_synthetic_absorption_has_the_known_answer():
    x, words, train, sae = _synthetic()
    result = absorption_from_activations(x, words, sae, train_mask=train)
    expected_a = N_ABSORBED / (N_TEST + N_ABSORBED)
    assert result["probe_accuracy"] > 0.99
    assert result["n_letters_measured"] == 26
    a = result["letters"]["a"]
    assert a["main_latents"] == [0]
    assert a["n_test_words"] == N_TEST + N_ABSORBED
    assert a["n_probe_true_positives"] == N_TEST + N_ABSORBED
    assert a["absorption_rate"] == pytest.approx(expected_a, abs=1e-9)
    assert a["full_absorption_rate"] == pytest.approx(expected_a, abs=1e-9)
    for li, letter in enumerate(LETTERS[1:], start=1):
        info = result["letters"][letter]
        assert info["main_latents"] == [li]
        assert info["absorption_rate"] == 0.0
        assert info["full_absorption_rate"] == 0.0
    assert result["first_letter_absorption"] == pytest.approx(expected_a / 26, abs=1e-9)
    assert result["first_letter_full_absorption"] == pytest.approx(expected_a / 26, abs=1e-9)
    assert result["warnings"] == []
    json.dumps(result)  # JSON-ready


def test_synthetic_without_absorbing_latents_scores_zero():
    x, words, train, sae = _synthetic()
    keep = torch.tensor([not w.startswith("absorbed") for w in words])
    words = [w for w, k in zip(words, keep.tolist(), strict=True) if k]
    result = absorption_from_activations(x[keep], words, sae, train_mask=train[keep])
    assert result["first_letter_absorption"] == 0.0
    assert result["first_letter_full_absorption"] == 0.0


def test_letters_without_enough_words_are_skipped_and_nothing_measurable_raises():
    x, words, train, sae = _synthetic()
    # Only 'b' keeps its test words: every other letter has none.
    keep = torch.tensor(
        [t or w.startswith("b") for w, t in zip(words, train.tolist(), strict=True)]
    )
    kept = [w for w, k in zip(words, keep.tolist(), strict=True) if k]
    result = absorption_from_activations(x[keep], kept, sae, train_mask=train[keep])
    assert result["n_letters_measured"] == 1
    assert result["skipped_letters"]["a"].startswith("too few test words")
    assert result["warnings"] and "min_feats_for_eval" in result["warnings"][0]
    # No test words at all: nothing can be measured.
    with pytest.raises(InputError, match="need both"):
        absorption_from_activations(
            x[train],
            [w for w, t in zip(words, train, strict=True) if t],
            sae,
            train_mask=train[train],
        )


def test_word_absorption_follows_saebench_arithmetic():
    s = FirstLetterSettings()
    cos = torch.tensor([0.9, 0.5, 0.05, 0.5])
    # main latent 0 carries 0.3 of a 1.0 probe projection; latent 1 carries 0.5 (cos >= 0.1)
    acts = torch.tensor([0.3 / 0.9, 1.0, 10.0, 0.0])
    frac, full = _word_absorption(1.0, acts * cos, acts, cos, [0], s)
    assert frac == pytest.approx(0.5 / 0.8)  # absorbed / (absorbed + main)
    assert full is False  # the main latent fired
    # absorbers carry < 40 %: no absorption
    acts = torch.tensor([0.3 / 0.9, 0.6, 0.0, 0.0])
    assert _word_absorption(1.0, acts * cos, acts, cos, [0], s)[0] == 0.0
    # main latent silent, one absorber carries 50 %: full absorption, fraction 1
    acts = torch.tensor([0.0, 1.0, 0.0, 0.0])
    assert _word_absorption(1.0, acts * cos, acts, cos, [0], s) == (1.0, True)
    # negative probe projection is never absorption
    assert _word_absorption(-1.0, acts * cos, acts, cos, [0], s) == (0.0, False)


def test_split_feats_grow_while_f1_jumps():
    feats = [[1], [1, 2], [1, 2, 3], [1, 2, 3, 4]]
    assert _split_feats([0.5, 0.6, 0.62, 0.9], feats, 0.03) == ([1, 2], 0.6)
    assert _split_feats([0.0, 0.0, 0.5, 0.9], feats, 0.03) == ([1], 0.0)


def test_balanced_logreg_is_at_sklearn_optimum():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 3, generator=g, dtype=torch.float64)
    y = (x[:, 0] + 0.5 * torch.randn(200, generator=g, dtype=torch.float64)) > 1.0
    w, b = fit_balanced_logreg(x, y)
    # gradient of 0.5|w|^2 + sum_i s_i log(1 + exp(-t_i z_i)) vanishes at the optimum
    params = torch.cat([w.double(), torch.tensor([b], dtype=torch.float64)]).requires_grad_()
    t = y.double() * 2 - 1
    n_pos = float(y.sum())
    s = torch.where(y, 200 / (2 * n_pos), 200 / (2 * (200 - n_pos)))
    z = x @ params[:-1] + params[-1]
    loss = 0.5 * params[:-1].pow(2).sum() + (s * torch.nn.functional.softplus(-t * z)).sum()
    (grad,) = torch.autograd.grad(loss, params)
    assert grad.abs().max() < 1e-3
    assert f1_score(y, z.detach() > 0) > 0.6


def test_f1_score_matches_definition():
    y = torch.tensor([1, 1, 0, 0, 1], dtype=torch.bool)
    p = torch.tensor([1, 0, 1, 0, 1], dtype=torch.bool)
    assert f1_score(y, p) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert f1_score(torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool)) == 0.0


def test_pack_with_one_word_is_saebench_prompt():
    import random

    text, prefixes = _pack([" cat"], ["dog", " Apple", " cat"], random.Random(0), 10)
    lines = text.split("\n")
    assert lines[-1] == " cat has the first letter:"
    assert sorted(lines[:-1]) == [" Apple has the first letter: A", "dog has the first letter: D"]
    assert prefixes == ["\n".join(lines[:-1]) + "\n cat"]
    text, prefixes = _pack(["x", "y"], ["z"], random.Random(0), 10)
    assert text == "z has the first letter: Z\nx has the first letter: X\ny has the first letter:"
    assert prefixes == [
        "z has the first letter: Z\nx",
        "z has the first letter: Z\nx has the first letter: X\ny",
    ]


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    from saedoctor.activations.model import load_model

    loaded = load_model(str(tiny_llama_dir))
    torch.manual_seed(0)
    d = loaded.d_model
    cfg = SAEConfig("topk", d_in=d, d_sae=4 * d, k=8)
    tensors = {
        "W_enc": torch.randn(d, 4 * d) / math.sqrt(d),
        "b_enc": torch.zeros(4 * d),
        "W_dec": torch.randn(4 * d, d) / math.sqrt(d),
        "b_dec": torch.zeros(d),
    }
    return loaded, build_sae(cfg, tensors, "random")


def test_wrapper_end_to_end_on_tiny_model(tiny):
    loaded, sae = tiny
    vocab = alpha_vocabulary(loaded.tokenizer)
    assert len(vocab) >= 26 * 4
    assert all(
        loaded.tokenizer(w, add_special_tokens=False)["input_ids"] == [i] for w, i in vocab.items()
    )
    # Loose filters so that the (meaningless) random model yields numbers deterministically.
    loose = FirstLetterSettings(
        min_gt_probe_f1=-1.0,
        min_test_words_per_letter=1,
        min_train_words_per_letter=1,
        probe_min_steps=50,
    )
    run = dict(max_words=len(vocab), seed=0, batch_size=8, settings=loose)
    result = first_letter_absorption(loaded.model, loaded.tokenizer, sae, Site(1), **run)
    json.dumps(result)
    assert result["method"] == "saebench_first_letter (probe-based)"
    assert 0.0 <= result["first_letter_absorption"] <= 1.0
    assert 0.0 <= result["first_letter_full_absorption"] <= 1.0
    assert 0.0 <= result["probe_accuracy"] <= 1.0
    assert result["n_words"] == len(vocab) - result["settings"]["n_dropped_tokenization"]
    assert result["settings"]["site"] == "blocks.1.hook_resid_post"
    for info in result["letters"].values():
        assert {"n_test_words", "measured"} <= set(info)
        if info["measured"]:
            assert 0.0 <= info["absorption_rate"] <= 1.0
            assert info["main_latents"]
    again = first_letter_absorption(loaded.model, loaded.tokenizer, sae, Site(1), **run)
    assert again["first_letter_absorption"] == result["first_letter_absorption"]


def test_wrapper_refuses_too_few_words(tiny):
    loaded, sae = tiny
    with pytest.raises(InputError, match="at least 104"):
        first_letter_absorption(loaded.model, loaded.tokenizer, sae, Site(1), max_words=50)
