"""Activation caches: written once as safetensors shards, diagnosed like the model run."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import random_sae, saved_sae
from typer.testing import CliRunner

from saedoctor.activations.cache_write import CacheOptions, open_cache, write_activation_cache
from saedoctor.activations.cached import iter_cached_batches, load_cached_activations
from saedoctor.cli import app
from saedoctor.diagnose import DiagnoseOptions, diagnose
from saedoctor.errors import InputError
from saedoctor.sae.site import Site

TOKENS, CONTEXT, BATCH = 512, 32, 4


def _cache(model_dir, corpus, out, **kw):
    opts = CacheOptions(model=str(model_dir), sites=[Site(0), Site(2, "mlp_out")],
                        corpus=str(corpus), out=str(out), tokens=TOKENS, context=CONTEXT,
                        batch_size=BATCH, shard_tokens=100, quiet=True, **kw)  # fmt: skip
    return write_activation_cache(opts)


def test_cache_then_diagnose_equals_the_model_run(tiny_llama_dir, text_corpus, tmp_path):
    written = _cache(tiny_llama_dir, text_corpus, tmp_path / "acts")
    assert set(written) == {"blocks.0.hook_resid_post", "blocks.2.hook_mlp_out"}
    index = json.loads((written["blocks.0.hook_resid_post"] / "index.json").read_text())
    assert len(index["shards"]) > 1 and index["tokens_processed"] == TOKENS
    assert sum(s["tokens"] for s in index["shards"]) == index["tokens_counted"]

    sae = saved_sae(tmp_path / "s", random_sae(64, 256, site=Site(0), seed=5))
    base = dict(saes=[str(sae)], context=CONTEXT, batch_size=BATCH, quiet=True,
                always_on_threshold=0.3)  # fmt: skip
    on_model = diagnose(DiagnoseOptions(model=str(tiny_llama_dir), corpus=str(text_corpus),
                                        tokens=TOKENS, downstream=False, **base))  # fmt: skip
    on_cache = diagnose(DiagnoseOptions(activations=str(written["blocks.0.hook_resid_post"]),
                                        **base))  # fmt: skip
    a, b = on_model["saes"][0]["metrics"], on_cache["saes"][0]["metrics"]
    assert b["tokens_seen"] == a["tokens_seen"] == index["tokens_counted"]
    assert b["sequences_seen"] == a["sequences_seen"]
    for key in ("l0", "variance_explained", "variance_explained_legacy", "mse", "cossim",
                "dead_count", "always_on_count", "diversity_top10", "absorption"):  # fmt: skip
        assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), key
    assert on_cache["saes"][0]["feature_density"] == on_model["saes"][0]["feature_density"]


def test_shards_are_read_lazily_in_whole_sequences(tiny_llama_dir, text_corpus, tmp_path):
    written = _cache(tiny_llama_dir, text_corpus, tmp_path / "acts", store_dtype="bfloat16")
    acts = load_cached_activations(written["blocks.2.hook_mlp_out"])
    assert acts.dim() == 2 and acts.shape[1] == 64
    seen, rows = set(), 0
    for x, seq in iter_cached_batches(acts, batch_tokens=50):
        assert x.dtype == torch.float32 and x.shape[0] == seq.shape[0]
        ids = set(seq.tolist())
        assert not ids & seen  # a sequence never straddles two batches
        seen |= ids
        rows += x.shape[0]
    assert rows == acts.shape[0]
    assert len(seen) == TOKENS // CONTEXT


def test_top_directory_with_several_sites_names_them(tiny_llama_dir, text_corpus, tmp_path):
    _cache(tiny_llama_dir, text_corpus, tmp_path / "acts")
    with pytest.raises(InputError, match="blocks.0.hook_resid_post, blocks.2.hook_mlp_out"):
        open_cache(tmp_path / "acts")
    with pytest.raises(InputError, match="not an activation cache"):
        open_cache(tmp_path)


def test_cache_activations_command(tiny_llama_dir, text_corpus, tmp_path):
    out = tmp_path / "c"
    result = CliRunner().invoke(app, ["cache-activations", "--model", str(tiny_llama_dir),
                                      "--layer", "1", "--corpus", str(text_corpus),
                                      "--tokens", "128", "--context", "32", "--out", str(out),
                                      "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert open_cache(out).tokens > 0  # a single site: the top directory is enough
    bad = CliRunner().invoke(app, ["cache-activations", "--layer", "1", "--out", str(out),
                                   "--store-dtype", "int8"])  # fmt: skip
    assert bad.exit_code == 2 and "--store-dtype" in bad.output
