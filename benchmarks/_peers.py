"""Shared helpers for the peer benchmarks: run SAELens (and SAEBench core) on saedoctor's inputs.

saedoctor never imports this; only `benchmarks/` and `tests/test_peer_agreement.py` do.

How the peers are wired, with no hub access (`offline()` sets HF_HUB_OFFLINE=1):

- The language model is the local HF directory saedoctor caches
  (`saedoctor.activations.model.ensure_default_cached()`), loaded with plain
  `AutoModelForCausalLM.from_pretrained(dir, local_files_only=True)` in float32, as
  saedoctor loads it (default attention: sdpa).
- SAELens needs a TransformerLens model. `wrap_bridge` wraps that HF model in
  TransformerLens 3's `TransformerBridge` (`boot_transformers(dir, hf_model=...)`, which reads
  the config from the model: no hub). The bridge runs the HF weights and modules but computes
  attention eagerly (for its hooks): its logits and `hook_resid_post` are bit-identical to HF
  with `attn_implementation="eager"` and agree with saedoctor's sdpa model to float32 rounding
  (SmolLM2: logits max |diff| ~1e-4 at |logits| ~40, residual ~1e-6 relative); see
  `check_against_hf`. `wrap_hooked` builds a classic `HookedTransformer` instead (config
  derived from the HF config, `convert_llama_weights`, no LN folding / centering, so
  `hook_resid_post` is the HF block output), agreeing to the same rounding level.
- Tokens: `eval_token_batches` packs the corpus with saedoctor's own `token_batches`
  (BOS-prefixed sequences, EOS between documents); `TokenStore` hands those exact tensors to
  SAELens in place of an `ActivationsStore`, and `special_token_ids` are passed as
  `exclude_special_tokens`, so SAELens ignores the positions saedoctor does not count.
- SAEs: saved with `saedoctor.sae.loaders.save_sae` (the SAELens 6 layout) and loaded by
  SAELens from the same directory with `sae_lens.SAE.load_from_disk`.
"""

from __future__ import annotations

import math
import os
import sys
import types
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saedoctor.activations.batches import TokenBatch

# saedoctor report key -> (SAELens run_evals group, key). SAELens's `mse` is, like ours, the
# mean over tokens of ||x - x_hat||^2 summed over d_in (SAELens >= 6.45; no /d_in conversion).
SAELENS_KEYS: dict[str, tuple[str, str]] = {
    "l0": ("sparsity", "l0"),
    "variance_explained": ("reconstruction_quality", "explained_variance"),
    "variance_explained_legacy": ("reconstruction_quality", "explained_variance_legacy"),
    "mse": ("reconstruction_quality", "mse"),
    "cossim": ("reconstruction_quality", "cossim"),
    "l2_ratio": ("shrinkage", "l2_ratio"),
    "relative_reconstruction_bias": ("shrinkage", "relative_reconstruction_bias"),
    "ce_clean": ("model_performance_preservation", "ce_loss_without_sae"),
    "ce_sae": ("model_performance_preservation", "ce_loss_with_sae"),
    "ce_ablated": ("model_performance_preservation", "ce_loss_with_ablation"),
    "loss_recovered": ("model_performance_preservation", "ce_loss_score"),
    "kl_sae": ("model_behavior_preservation", "kl_div_with_sae"),
    "kl_ablated": ("model_behavior_preservation", "kl_div_with_ablation"),
    "kl_score": ("model_behavior_preservation", "kl_div_score"),
}
DOWNSTREAM_KEYS = ("ce_clean", "ce_sae", "ce_ablated", "loss_recovered",
                   "kl_sae", "kl_ablated", "kl_score")  # fmt: skip
# Where a peer's definition is not ours, the agreement can only be approximate: say why.
DEFINITION_NOTES = {
    "variance_explained_legacy": "per-token mean over all tokens (ours: mean of batch means)",
    "relative_reconstruction_bias": "mean of per-batch ratios (ours: one global ratio)",
}
# Feature-count metrics derived from a density vector, with saedoctor's default thresholds.
DENSITY_COUNTS = {
    "dead_count": lambda d: int((d < 0.0005).sum()),
    "never_fired_count": lambda d: int((d == 0).sum()),
    "dense_count": lambda d: int((d > 0.10).sum()),
    "always_on_count": lambda d: int((d > 0.80).sum()),
}


def offline() -> None:
    """No hub access from here on (the model and SAEs are local)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[var] = "1"


def default_model_dir() -> Path:
    from saedoctor.activations.model import ensure_default_cached

    return ensure_default_cached()


def load_hf(model_dir: str | Path) -> tuple[Any, Any]:
    """(model, tokenizer) exactly as saedoctor loads a local directory: float32, eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, local_files_only=True
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model.eval().requires_grad_(False)
    return model, tokenizer


# -- TransformerLens wrappers -------------------------------------------------------------
def wrap_bridge(hf_model: Any, tokenizer: Any, model_dir: str | Path) -> Any:
    """TransformerLens 3 `TransformerBridge` around `hf_model` (which it modifies in place:
    hook wrappers are inserted into its module tree, so keep a separate HF reference)."""
    import logging

    from transformer_lens.model_bridge import TransformerBridge

    logging.getLogger("transformer_lens").setLevel(logging.ERROR)
    bridge = TransformerBridge.boot_transformers(
        str(model_dir), hf_model=hf_model, tokenizer=tokenizer, device="cpu", dtype=torch.float32
    )
    bridge.eval()
    return bridge


def wrap_hooked(hf_model: Any, tokenizer: Any, n_ctx: int = 2048) -> Any:
    """A classic `HookedTransformer` with the HF Llama weights, unprocessed (no LN folding or
    centering, so `hook_resid_post` is the HF block output)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_llama_weights

    c = hf_model.config
    if c.model_type != "llama":
        raise ValueError(f"wrap_hooked supports Llama-architecture models, not {c.model_type}")
    rope = (getattr(c, "rope_parameters", None) or {}).get("rope_theta") or c.rope_theta
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv = c.num_key_value_heads
    cfg = HookedTransformerConfig(
        d_model=c.hidden_size, d_head=head_dim, n_heads=c.num_attention_heads,
        d_mlp=c.intermediate_size, n_layers=c.num_hidden_layers, n_ctx=n_ctx,
        eps=c.rms_norm_eps, d_vocab=c.vocab_size, act_fn=c.hidden_act,
        n_key_value_heads=kv if kv != c.num_attention_heads else None,
        normalization_type="RMS", positional_embedding_type="rotary",
        rotary_adjacent_pairs=False, rotary_dim=head_dim, rotary_base=rope, final_rms=True,
        gated_mlp=True, original_architecture="LlamaForCausalLM", tokenizer_prepends_bos=False,
        default_prepend_bos=False, dtype=torch.float32, device="cpu",
    )  # fmt: skip
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    model.load_and_process_state_dict(
        convert_llama_weights(hf_model, cfg),
        fold_ln=False, center_writing_weights=False, center_unembed=False,
        fold_value_biases=False, refactor_factored_attn_matrices=False,
    )  # fmt: skip
    model.eval()
    return model


def wrap_model(kind: str, hf_model: Any, tokenizer: Any, model_dir: str | Path) -> Any:
    if kind == "bridge":
        return wrap_bridge(hf_model, tokenizer, model_dir)
    if kind == "hooked":
        return wrap_hooked(hf_model, tokenizer)
    raise ValueError(f"TransformerLens wrapper {kind!r}: expected 'bridge' or 'hooked'")


@torch.inference_mode()
def check_against_hf(
    tl_model: Any, hf_reference: Any, input_ids: torch.Tensor, layers: Sequence[int]
) -> dict[str, float]:
    """Max |difference| of logits and of `blocks.L.hook_resid_post` (vs saedoctor's reader on
    an HF model that no wrapper touched), and the logits' scale for context."""
    from saedoctor.activations.sites import SiteReader
    from saedoctor.sae.site import Site

    ref_logits = hf_reference(input_ids=input_ids, use_cache=False).logits
    logits = tl_model(input_ids, return_type="logits")
    sites = [Site(layer) for layer in layers]
    with SiteReader(hf_reference, sites) as reader:
        ref_acts = reader.read(input_ids)
    names = [s.hook_name for s in sites]
    _, cache = tl_model.run_with_cache(input_ids, names_filter=names, prepend_bos=False)
    resid = max(float((cache[s.hook_name] - ref_acts[s]).abs().max()) for s in sites)
    return {
        "logits_max_abs_diff": float((logits - ref_logits).abs().max()),
        "logits_max_abs": float(ref_logits.abs().max()),
        "resid_post_max_abs_diff": resid,
    }


# -- tokens -------------------------------------------------------------------------------
def eval_token_batches(
    tokenizer: Any, corpus: str, tokens: int, context: int, batch_size: int
) -> list[TokenBatch]:
    """The batches saedoctor's `diagnose` streams for these options (same packing code)."""
    from saedoctor.activations.batches import token_batches
    from saedoctor.activations.corpus import iter_documents

    return list(
        token_batches(
            tokenizer, iter_documents(corpus), context=context, batch_size=batch_size,
            max_tokens=tokens, name=corpus,
        )
    )  # fmt: skip


def special_token_ids(tokenizer: Any) -> list[int]:
    """The ids saedoctor never counts (BOS, EOS, pad): SAELens's `exclude_special_tokens`."""
    ids = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    return sorted({i for i in ids if i is not None})


class TokenStore:
    """Stand-in for SAELens's `ActivationsStore`: replays fixed token batches.

    SAELens's eval functions only call `get_batch_tokens` (once per batch) and
    `reset_input_dataset` (between the downstream and the sparsity passes).
    """

    def __init__(self, batches: Iterable[torch.Tensor]) -> None:
        self.batches = [b.clone() for b in batches]
        if not self.batches:
            raise ValueError("TokenStore: no batches")
        self.store_batch_size_prompts = self.batches[0].shape[0]
        self.context_size = self.batches[0].shape[1]
        self.index = 0

    @classmethod
    def from_token_batches(cls, batches: Iterable[TokenBatch]) -> TokenStore:
        return cls(b.input_ids for b in batches)

    def __len__(self) -> int:
        return len(self.batches)

    def get_batch_tokens(self, batch_size: int | None = None, **_: Any) -> torch.Tensor:
        if self.index >= len(self.batches):
            raise RuntimeError("TokenStore exhausted: more batches asked than were built")
        batch = self.batches[self.index]
        self.index += 1
        return batch

    def reset_input_dataset(self) -> None:
        self.index = 0


# -- SAELens ------------------------------------------------------------------------------
@dataclass
class PeerResult:
    """One SAE evaluated by a peer: flat metrics (saedoctor names) and the density vector."""

    metrics: dict[str, float]
    density: list[float]
    raw: dict[str, Any]


def load_saelens_sae(path: str | Path) -> Any:
    from sae_lens import SAE

    return SAE.load_from_disk(str(path), device="cpu")


def saelens_evaluate(
    sae_path: str | Path,
    model: Any,
    store: TokenStore,
    ignore_tokens: Sequence[int],
    *,
    downstream: bool = True,
) -> PeerResult:
    """SAELens's own `run_evals` over every batch of `store` (the same batches for the
    downstream and the sparsity / variance passes)."""
    from sae_lens.evals import EvalConfig, run_evals
    from sae_lens.training.activation_scaler import ActivationScaler

    sae = load_saelens_sae(sae_path)
    n = len(store)
    cfg = EvalConfig(
        batch_size_prompts=store.store_batch_size_prompts,
        n_eval_reconstruction_batches=n, n_eval_sparsity_variance_batches=n,
        compute_kl=downstream, compute_ce_loss=downstream, compute_l2_norms=True,
        compute_sparsity_metrics=True, compute_variance_metrics=True,
        compute_featurewise_density_statistics=True,
    )  # fmt: skip
    store.reset_input_dataset()
    metrics, feature_metrics = run_evals(
        sae, store, model, ActivationScaler(), cfg, exclude_special_tokens=list(ignore_tokens)
    )
    return _peer_result(metrics, feature_metrics["feature_density"])


def _peer_result(metrics: dict[str, Any], density: list[float]) -> PeerResult:
    flat = {}
    for ours, (group, key) in SAELENS_KEYS.items():
        value = metrics.get(group, {}).get(key)
        if value is not None:
            flat[ours] = float(value)
    dens = torch.tensor(density, dtype=torch.float64)
    flat.update({name: fn(dens) for name, fn in DENSITY_COUNTS.items()})
    return PeerResult(flat, [float(d) for d in density], metrics)


# -- SAEBench core ------------------------------------------------------------------------
SAEBENCH_HINT = (
    "SAEBench core skipped: sae-bench 0.6.0 pins numpy<2 and datasets<4 (this environment "
    "has numpy {numpy}, datasets {datasets}), so it cannot be installed here. To include it "
    "anyway, `pip download --no-deps sae-bench==0.6.0` and pass --saebench-wheel PATH "
    "(the wheel or its unpacked folder): its core eval only needs torch, sae-lens and "
    "transformer-lens."
)


def import_saebench_core(wheel: str | Path | None) -> Any:
    """`sae_bench.evals.core.main`, from the environment or from a downloaded wheel (unpacked
    next to it: zipimport cannot import its namespace packages); None when neither works."""
    if wheel is not None:
        sys.path.insert(0, str(_unpacked(Path(wheel).resolve())))
    try:
        import tabulate  # noqa: F401  (sae_bench imports it; not installed here)
    except ImportError:
        stub = types.ModuleType("tabulate")
        stub.tabulate = lambda rows, headers=(), **_: "\n".join(map(str, rows))
        sys.modules["tabulate"] = stub
    try:
        import sae_bench.evals.core.main as core
    except ImportError:
        return None
    return core


def _unpacked(wheel: Path) -> Path:
    if wheel.is_dir():
        return wheel
    import zipfile

    target = wheel.with_suffix("")
    if not (target / "sae_bench").is_dir():
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(target)
    return target


def saebench_hint() -> str:
    import datasets
    import numpy

    return SAEBENCH_HINT.format(numpy=numpy.__version__, datasets=datasets.__version__)


def saebench_evaluate(
    core: Any,
    sae_path: str | Path,
    model: Any,
    store: TokenStore,
    ignore_tokens: Sequence[int],
    *,
    downstream: bool = True,
) -> PeerResult:
    """SAEBench 0.6.0 core `run_evals` on the same batches, SAE and model.

    Its `explained_variance` and `mse` carry the bugs SAELens fixed in 6.45.x: the variance
    subtracts (mean of x^2)^2 instead of ||mean x||^2, and mse is divided by the batch's
    token count. `variance_explained_legacy` is the number to compare with.
    """
    from sae_bench.evals.core.eval_config import CoreEvalConfig
    from sae_bench.sae_bench_utils.general_utils import _standardize_sae_cfg

    sae = load_saelens_sae(sae_path)
    _standardize_sae_cfg(sae.cfg)
    n = len(store)
    cfg = CoreEvalConfig(
        batch_size_prompts=store.store_batch_size_prompts, n_eval_reconstruction_batches=n,
        n_eval_sparsity_variance_batches=n, compute_kl=downstream, compute_ce_loss=downstream,
        compute_l2_norms=True, compute_sparsity_metrics=True, compute_variance_metrics=True,
        compute_featurewise_density_statistics=True,
        compute_featurewise_weight_based_metrics=False,
        exclude_special_tokens_from_reconstruction=True,
    )  # fmt: skip
    store.reset_input_dataset()
    ignore = set(ignore_tokens)
    metrics, feature_metrics = core.run_evals(sae, store, model, cfg, ignore_tokens=ignore)
    return _peer_result(metrics, feature_metrics["feature_density"])


# -- comparison ---------------------------------------------------------------------------
def rel_diff(ours: float | None, theirs: float | None) -> float | None:
    """|ours - theirs| / max(|theirs|, tiny); None when either is missing."""
    if ours is None or theirs is None or not (math.isfinite(ours) and math.isfinite(theirs)):
        return None
    return abs(ours - theirs) / max(abs(theirs), 1e-30)


def density_diff(
    ours: Sequence[float], theirs: Sequence[float], tokens: int | None = None
) -> dict[str, float | int | None]:
    """Max abs / max relative (over features firing on either side) difference; with the
    number of counted tokens, also how many features' firing counts differ."""
    a = torch.tensor(list(ours), dtype=torch.float64)
    b = torch.tensor(list(theirs), dtype=torch.float64)
    if a.shape != b.shape:
        raise ValueError(f"density vectors of {a.numel()} and {b.numel()} features")
    diff = (a - b).abs()
    live = (a > 0) | (b > 0)
    rel = diff[live] / torch.maximum(a[live], b[live])
    counts = None
    if tokens is not None:
        counts = int(((a * tokens).round() != (b * tokens).round()).sum())
    return {
        "max_abs": float(diff.max()),
        "max_rel": float(rel.max()) if rel.numel() else 0.0,
        "features_with_different_counts": counts,
    }


# -- SAEs under test ----------------------------------------------------------------------
@torch.inference_mode()
def site_means(
    hf_model: Any, tokenizer: Any, layers: Sequence[int], corpus: str, tokens: int,
    context: int = 128, batch_size: int = 8,
) -> dict[int, torch.Tensor]:  # fmt: skip
    """Mean `resid_post` activation over counted tokens, per layer (one pass for all)."""
    from saedoctor.activations.stream import site_batches
    from saedoctor.sae.site import Site

    sites = [Site(layer) for layer in layers]
    sums = {s: torch.zeros(hf_model.config.hidden_size, dtype=torch.float64) for s in sites}
    n = 0
    batches = eval_token_batches(tokenizer, corpus, tokens, context, batch_size)
    for sb in site_batches(hf_model, sites, batches):
        n += sb.seq_ids.numel()
        for s in sites:
            sums[s] += sb.acts[s].double().sum(0)
    return {s.layer: (sums[s] / n).float() for s in sites}


def random_topk_sae(
    layer: int, mean: torch.Tensor, *, expansion: int = 8, k: int = 32, seed: int = 0,
    model_name: str | None = None,
) -> Any:  # fmt: skip
    """A random but sane TopK SAE: unit-norm decoder rows, encoder = decoder.T, b_dec = the
    mean activation (how TopK trainers initialise), at `blocks.<layer>.hook_resid_post`."""
    from saedoctor.sae.model import SAE, SAEConfig
    from saedoctor.sae.site import Site

    d_in = mean.numel()
    cfg = SAEConfig("topk", d_in, d_in * expansion, k=k, site=Site(layer), model_name=model_name)
    sae = SAE(cfg)
    gen = torch.Generator().manual_seed(seed * 1000 + layer)
    with torch.no_grad():
        w = torch.randn(cfg.d_sae, d_in, generator=gen)
        sae.W_dec.copy_(w / w.norm(dim=1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_dec.copy_(mean)
    sae.cfg.metadata["init"] = "random: unit-norm decoder, W_enc = W_dec.T, b_dec = mean"
    return sae.requires_grad_(False)


@torch.inference_mode()
def topk_flip_audit(
    sae_paths: dict[int, str | Path],
    tl_model: Any,
    hf_reference: Any,
    batches: Sequence[TokenBatch],
    ours_density: dict[int, Sequence[float]],
) -> dict[int, dict[str, int]]:
    """Why per-feature densities differ: for each layer, SAELens's own SAE encodes (a) the
    activations saedoctor reads (HF model, default sdpa attention) and (b) the TL model's
    hook activations, at the same counted positions.

    `counts_differ_from_saedoctor`: features whose firing count on (a) differs from
    saedoctor's report (0 means the metric code agrees exactly on identical inputs);
    `tokens_with_other_topk`: tokens whose top-k feature set differs between (a) and (b),
    i.e. float32 rounding of the two attention kernels moving a feature across the k-th
    place; `counts_differ_between_inputs`: features whose counts differ between (a) and (b).
    """
    from saedoctor.activations.sites import SiteReader
    from saedoctor.activations.stream import counted_rows
    from saedoctor.sae.site import Site

    saes = {layer: load_saelens_sae(p) for layer, p in sae_paths.items()}
    sites = {layer: Site(layer) for layer in saes}
    d_sae = {layer: sae.cfg.d_sae for layer, sae in saes.items()}
    counts = {(layer, src): torch.zeros(n, dtype=torch.long)
              for layer, n in d_sae.items() for src in "ab"}  # fmt: skip
    flipped = dict.fromkeys(saes, 0)
    names = [s.hook_name for s in sites.values()]
    with SiteReader(hf_reference, list(sites.values())) as reader:
        for batch in batches:
            positions, _ = counted_rows(batch)
            ref = reader.read(batch.input_ids)
            _, cache = tl_model.run_with_cache(
                batch.input_ids, names_filter=names, prepend_bos=False,
                stop_at_layer=max(saes) + 1,
            )  # fmt: skip
            for layer, sae in saes.items():
                site = sites[layer]
                fired = {}
                for src, acts in (("a", ref[site]), ("b", cache[site.hook_name])):
                    x = acts.reshape(-1, acts.shape[-1])[positions]
                    fired[src] = sae.encode(x) != 0
                    counts[(layer, src)] += fired[src].sum(0)
                flipped[layer] += int((fired["a"] != fired["b"]).any(dim=1).sum())
    out = {}
    for layer in saes:
        n = sum(int(b.counted.sum()) for b in batches)
        ours = (torch.tensor(list(ours_density[layer]), dtype=torch.float64) * n).round().long()
        a, b = counts[(layer, "a")], counts[(layer, "b")]
        out[layer] = {
            "counts_differ_from_saedoctor": int((a != ours).sum()),
            "tokens_with_other_topk": flipped[layer],
            "counts_differ_between_inputs": int((a != b).sum()),
        }
    return out
