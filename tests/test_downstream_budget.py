"""`downstream_tokens`: loss recovered / KL on the first tokens of the main pass only, every
other metric on all of them — each equal to a run that measures just that."""

from __future__ import annotations

import pytest
from helpers import random_sae, saved_sae

from saedoctor.diagnose import DiagnoseOptions, diagnose
from saedoctor.sae.site import Site

CONTEXT, BATCH = 32, 4  # 128 tokens per batch
DOWNSTREAM_KEYS = ("ce_clean", "ce_sae", "ce_ablated", "loss_recovered", "kl_sae", "kl_ablated",
                   "kl_score", "downstream_tokens")  # fmt: skip


def run(model_dir, corpus, sae_dir, **kw) -> dict:
    opts = dict(model=str(model_dir), saes=[str(sae_dir)], corpus=str(corpus), tokens=640,
                context=CONTEXT, batch_size=BATCH, quiet=True, include_special=True,
                downstream_tokens=None)  # fmt: skip
    opts.update(kw)
    return diagnose(DiagnoseOptions(**opts))["saes"][0]["metrics"]


def test_budget_splits_the_pass(tiny_llama_dir, text_corpus, tmp_path, one_thread) -> None:
    sae = saved_sae(tmp_path / "s", random_sae(64, 256, site=Site(2), seed=3))
    budget = 2 * BATCH * CONTEXT  # the first two batches of five
    split = run(tiny_llama_dir, text_corpus, sae, downstream_tokens=budget)
    first_batches = run(tiny_llama_dir, text_corpus, sae, tokens=budget)
    no_logits = run(tiny_llama_dir, text_corpus, sae, downstream=False)
    for key in DOWNSTREAM_KEYS:
        assert split[key] == pytest.approx(first_batches[key], rel=1e-12), key
    for key in ("l0", "dead_pct", "variance_explained", "mse", "diversity_top10", "tokens_seen"):
        assert split[key] == pytest.approx(no_logits[key], rel=1e-12), key
    assert split["tokens_seen"] > split["downstream_tokens"]


def test_budget_at_least_tokens_is_every_token(tiny_llama_dir, text_corpus, tmp_path,
                                               one_thread) -> None:  # fmt: skip
    sae = saved_sae(tmp_path / "s", random_sae(64, 256, site=Site(1), seed=4))
    everything = run(tiny_llama_dir, text_corpus, sae)
    capped = run(tiny_llama_dir, text_corpus, sae, downstream_tokens=640)
    assert capped == everything


def test_budget_must_be_positive() -> None:
    from saedoctor.errors import InputError

    with pytest.raises(InputError, match="--downstream-tokens"):
        DiagnoseOptions(downstream_tokens=0).validate()
