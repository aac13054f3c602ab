"""Runs in SAEDashboard's own venv (see `_sae_dashboard_env.py`); never imports saedoctor.

    feature-data --model HF_DIR --sae SAE_DIR --tokens T.safetensors --features 1,2,3
                 --out OUT.json [--top 10] [--logit-rows 10] [--buffer none|B,A]
                 [--ignore-tokens 0,1,2] [--fold-w-dec-norm skip|force]
                 [--minibatch-tokens 64]

Runs SAEDashboard 0.8.0's feature-centric data generation (`SaeVisRunner(SaeVisConfig).run`)
on CPU for exactly the given features of one SAE, on the fixed token tensor `input_ids`
[n_seqs, context] (int64) in T.safetensors, and writes OUT.json (the top activating examples
and the logit-lens tables as SAEDashboard computes them, see `feature_json`) and OUT.acts
.safetensors (`acts_<feature>` [n_seqs, context] float32: the feature's activations exactly
as SAEDashboard ranked them, i.e. after its ignore-token mask; `input_ids` again).

How the inputs reach SAEDashboard, with no hub access:
* Model: the local HF directory, loaded with transformers (float32), wrapped in a
  `HookedSAETransformer` built the way `HookedTransformer.from_pretrained` builds a Llama
  (TransformerLens's `convert_llama_weights`, then `load_and_process_state_dict` with
  from_pretrained's defaults fold_ln=True, center_writing_weights=True, center_unembed=True,
  fold_value_biases=True). `from_pretrained` itself cannot be used: SmolLM2 is not among
  TransformerLens 2.17's official model names, and its local-directory config path gives a
  Llama no `rotary_base` (10000 instead of SmolLM2's 100000); so the config is built here
  from the HF config (see `tl_config`). The HF config.json was written by transformers 5
  (`rope_parameters`), which transformers 4.56 does not read: rope_theta is restored.
  fold_ln folds the final RMSNorm weight into W_U and center_unembed subtracts each W_U row's
  mean over the vocabulary; neither changes `hook_resid_post` (RMS models: writing weights
  are not centred), so the SAE sees the HF residual stream (float32 rounding apart: TL's
  eager attention vs HF's kernels; the worker measures it, `tl_check`).
* Tokenizer: tokenizer.json through `PreTrainedTokenizerFast` (transformers 5 records the
  class as `TokenizersBackend`, unknown to 4.56), set on the model as an attribute
  (TransformerLens's `set_tokenizer` would reload it by name). Feature data never tokenises:
  it only turns ids into the strings SAEDashboard's HTML shows (`get_decode_html_safe_fn`).
* SAE: `sae_lens.SAE.load_from_disk(dir, dtype="float32")` (the default SAE's weights are
  stored in float16; float32 is what saedoctor computes in).
* `SaeVisRunner.run` first calls `encoder.fold_W_dec_norm()`. SAELens 6.54 refuses that for a
  TopK SAE with `rescale_acts_by_decoder_norm=False` (NotImplementedError: it could change the
  top-k selection), so SAEDashboard 0.8.0 cannot run such an SAE unaided. `skip` (default)
  makes the call a no-op, as SAEDashboard itself does for CLTs: activations are then SAELens's
  plain `encode`. `force` applies SAELens's base-class fold anyway (decoder rows scaled to
  norm 1, encoder columns by the old norms): activations are scaled by the decoder norms and
  the top-k set may change; both are reported (`decoder_norm_range`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

CPU = "cpu"


# -- the model ------------------------------------------------------------------------------
def load_hf(model_dir: Path) -> tuple[Any, Any]:
    """(HF model float32 eval, tokenizer) from a local directory, with rope_theta restored."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    raw = json.loads((model_dir / "config.json").read_text())
    rope = (raw.get("rope_parameters") or {}).get("rope_theta", raw.get("rope_theta"))
    if rope is not None:
        config.rope_theta = float(rope)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, config=config, dtype=torch.float32, local_files_only=True
    )
    model.eval().requires_grad_(False)
    return model, load_tokenizer(model_dir)


def load_tokenizer(model_dir: Path) -> Any:
    """The fast tokenizer from tokenizer.json. transformers 5 records its class as
    `TokenizersBackend`, a name transformers 4.56 does not know, so the class is given here
    and the special tokens are taken from tokenizer_config.json."""
    from transformers import PreTrainedTokenizerFast

    raw = json.loads((model_dir / "tokenizer_config.json").read_text())
    special = {k: raw[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token") if k in raw}
    return PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"), **special)


def tl_config(hf_config: Any, n_ctx: int) -> Any:
    """What TransformerLens's Llama branch derives from an HF config, plus rotary_base, with
    normalization_type RMSPre as from_pretrained sets it when fold_ln=True."""
    from transformer_lens import HookedTransformerConfig

    c = hf_config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv = c.num_key_value_heads
    return HookedTransformerConfig(
        d_model=c.hidden_size, d_head=head_dim, n_heads=c.num_attention_heads,
        d_mlp=c.intermediate_size, n_layers=c.num_hidden_layers, n_ctx=n_ctx,
        eps=c.rms_norm_eps, d_vocab=c.vocab_size, act_fn=c.hidden_act,
        n_key_value_heads=kv if kv != c.num_attention_heads else None,
        normalization_type="RMSPre", positional_embedding_type="rotary",
        rotary_adjacent_pairs=False, rotary_dim=head_dim, rotary_base=float(c.rope_theta),
        final_rms=True, gated_mlp=True, original_architecture="LlamaForCausalLM",
        tokenizer_prepends_bos=False, default_prepend_bos=False, dtype=torch.float32,
        device=CPU, init_weights=False,
    )  # fmt: skip


def load_tl(hf_model: Any, tokenizer: Any, n_ctx: int) -> Any:
    from sae_lens import HookedSAETransformer
    from transformer_lens.pretrained.weight_conversions import convert_llama_weights

    if hf_model.config.model_type != "llama":
        raise SystemExit(f"only Llama-architecture models: got {hf_model.config.model_type}")
    cfg = tl_config(hf_model.config, n_ctx)
    model = HookedSAETransformer(cfg, tokenizer=None, move_to_device=False)
    # Set directly: TransformerLens's set_tokenizer reloads the tokenizer by name through
    # AutoTokenizer, which cannot read this one (see load_tokenizer). Feature data never
    # tokenises; the tokenizer is there for SAEDashboard's HTML writer.
    model.tokenizer = tokenizer
    # from_pretrained's defaults: what SAEDashboard users get from HookedTransformer loading.
    model.load_and_process_state_dict(
        convert_llama_weights(hf_model, cfg), fold_ln=True, center_writing_weights=True,
        center_unembed=True, fold_value_biases=True, refactor_factored_attn_matrices=False,
    )  # fmt: skip
    model.eval()
    return model


@torch.inference_mode()
def tl_check(tl_model: Any, hf_model: Any, tokens: torch.Tensor, layer: int) -> dict[str, float]:
    """Max |difference| of `blocks.L.hook_resid_post` between TransformerLens and HF."""
    name = f"blocks.{layer}.hook_resid_post"
    _, cache = tl_model.run_with_cache(tokens, names_filter=[name], stop_at_layer=layer + 1)
    ref = hf_model(input_ids=tokens, output_hidden_states=True, use_cache=False).hidden_states
    diff = (cache[name] - ref[layer + 1]).abs()
    return {"resid_post_max_abs_diff": float(diff.max()),
            "resid_post_max_abs": float(ref[layer + 1].abs().max()),
            "checked_sequences": int(tokens.shape[0])}  # fmt: skip


# -- the SAE --------------------------------------------------------------------------------
def load_sae(sae_dir: Path, fold: str) -> tuple[Any, dict[str, float]]:
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(sae_dir), device=CPU, dtype="float32")
    norms = sae.W_dec.detach().norm(dim=-1)
    info = {"min": float(norms.min()), "max": float(norms.max())}
    if fold == "skip":
        sae.fold_W_dec_norm = lambda: None  # see the module docstring
    elif fold == "force":
        sae.fold_W_dec_norm = lambda: SAE.fold_W_dec_norm(sae)
    return sae, info


# -- SAEDashboard ---------------------------------------------------------------------------
def vis_config(args: argparse.Namespace, hook: str, features: list[int]) -> Any:
    from sae_dashboard.components_config import (
        ActsHistogramConfig,
        Column,
        FeatureTablesConfig,
        LogitsHistogramConfig,
        LogitsTableConfig,
        SequencesConfig,
    )
    from sae_dashboard.layout import SaeVisLayoutConfig
    from sae_dashboard.sae_vis_data import SaeVisConfig

    # The default feature-centric layout, with the top group's size and the logit table's
    # rows set, the buffer chosen, and no quantile groups (random samples, not compared).
    layout = SaeVisLayoutConfig(
        columns=[
            Column(FeatureTablesConfig()),
            Column(
                ActsHistogramConfig(),
                LogitsTableConfig(n_rows=args.logit_rows),
                LogitsHistogramConfig(),
            ),  # fmt: skip
            Column(
                SequencesConfig(
                    buffer=args.buffer_pair,
                    top_acts_group_size=args.top,
                    n_quantiles=0,
                    stack_mode="stack-none",
                )
            ),  # fmt: skip
        ],
        height=750,
    )
    return SaeVisConfig(
        hook_point=hook, features=features, minibatch_size_features=len(features),
        minibatch_size_tokens=args.minibatch_tokens, device=CPU, dtype="float32",
        ignore_tokens=set(args.ignore_list), seed=0, verbose=False,
        feature_centric_layout=layout,
    )  # fmt: skip


def capture_sequence_inputs(store: list[torch.Tensor]) -> None:
    """Keep the (masked, unrounded) activations SAEDashboard ranks, one tensor per feature in
    run order: `SequenceData.feat_acts` only keeps them rounded to 4 decimals."""
    from sae_dashboard.sequence_data_generator import SequenceDataGenerator

    original = SequenceDataGenerator.get_sequences_data

    def wrapped(self: Any, feat_acts: torch.Tensor, *a: Any, **kw: Any) -> Any:
        store.append(feat_acts.detach().to(torch.float32).clone())
        return original(self, feat_acts, *a, **kw)

    SequenceDataGenerator.get_sequences_data = wrapped


def run_dashboard(args: argparse.Namespace, tl_model: Any, sae: Any, tokens: torch.Tensor,
                  features: list[int]) -> tuple[Any, dict[int, torch.Tensor], float]:  # fmt: skip
    from sae_dashboard.sae_vis_runner import SaeVisRunner

    captured: list[torch.Tensor] = []
    capture_sequence_inputs(captured)
    cfg = vis_config(args, sae.cfg.metadata.hook_name, features)
    start = time.perf_counter()
    data = SaeVisRunner(cfg).run(encoder=sae, model=tl_model, tokens=tokens)
    seconds = time.perf_counter() - start
    # One feature batch (minibatch_size_features = len(features)): calls follow `features`.
    if len(captured) != len(features):
        raise SystemExit(f"captured {len(captured)} activation tensors for {len(features)} "
                         "features")  # fmt: skip
    return data, dict(zip(features, captured, strict=True)), seconds


# -- output ---------------------------------------------------------------------------------
def window_layout(buffer: tuple[int, int] | None, pos: int, seq_len: int) -> tuple[int, int]:
    """(first position shown, index of the focus token in the window). SAEDashboard gathers
    B+A+2 positions from pos-B-1 and drops the first (it is only for loss effects); with no
    buffer it gathers the whole sequence and drops position 0."""
    if buffer is None:
        return 1, pos - 1
    return pos - buffer[0], buffer[0]


def feature_json(feat: int, fd: Any, acts: torch.Tensor, tokens: torch.Tensor,
                 decode: Any, buffer: tuple[int, int] | None) -> dict[str, Any]:  # fmt: skip
    top_group = fd.sequence_data.seq_group_data[0]
    examples = []
    for sd in top_group.seq_data:
        seq, pos = sd.original_index, sd.qualifying_token_index
        start, focus = window_layout(buffer, pos, tokens.shape[1])
        if sd.token_ids != tokens[seq, start : start + len(sd.token_ids)].tolist():
            raise SystemExit(f"feature {feat}: window of ({seq}, {pos}) is not at {start}")
        examples.append({
            "sequence": seq, "position": pos, "activation": float(acts[seq, pos]),
            "window_start": start, "focus": focus, "token_ids": sd.token_ids,
            "tokens": decode(sd.token_ids), "activations": sd.feat_acts,
        })  # fmt: skip
    lt = fd.logits_table_data
    return {
        "feature": feat,
        "top_group_title": top_group.title,
        "firing_count": int((acts > 0).sum()),
        "top_examples": examples,
        "logit_lens": {
            "top": [
                [i, decode(i), v] for i, v in zip(lt.top_token_ids, lt.top_logits, strict=True)
            ],  # fmt: skip
            "bottom": [
                [i, decode(i), v]
                for i, v in zip(lt.bottom_token_ids, lt.bottom_logits, strict=True)
            ],  # fmt: skip
        },
    }


def settings(args: argparse.Namespace, data: Any) -> dict[str, Any]:
    seq_cfg = data.cfg.feature_centric_layout.seq_cfg
    return {
        "api": "sae_dashboard.sae_vis_runner.SaeVisRunner(SaeVisConfig).run(encoder=SAE, "
               "model=HookedSAETransformer, tokens=[n_seqs, context])",
        "buffer": list(seq_cfg.buffer) if seq_cfg.buffer is not None else None,
        "top_acts_group_size": seq_cfg.top_acts_group_size,
        "n_quantiles": seq_cfg.n_quantiles,
        "logits_table_rows": data.cfg.feature_centric_layout.logits_table_cfg.n_rows,
        "ignore_tokens": sorted(data.cfg.ignore_tokens),
        "minibatch_size_tokens": data.cfg.minibatch_size_tokens,
        "dtype": data.cfg.dtype, "device": data.cfg.device, "seed": data.cfg.seed,
        "fold_w_dec_norm": args.fold_w_dec_norm,
        "model_processing": {"fold_ln": True, "center_writing_weights": True,
                             "center_unembed": True, "fold_value_biases": True,
                             "center_writing_weights_applied": False},
        "logit_lens": "W_dec[f] @ W_U, W_U = TransformerLens's processed unembedding: the "
                      "final RMSNorm weight folded in (diag(g) W_U) and each row centred over "
                      "the vocabulary (center_unembed); top/bottom by torch.topk",
        "ranking": "torch.topk over the flattened [n_seqs, eligible positions] activations "
                   "after the ignore-token mask (zeroed); ties in unspecified order; with a "
                   "buffer (B, A) only positions B+1 .. context-A-1 are eligible",
        "activations_shown": "SequenceData.feat_acts, rounded to 4 decimals by SAEDashboard",
    }  # fmt: skip


def versions() -> dict[str, str]:
    import importlib.metadata as md

    names = ("sae-dashboard", "sae-lens", "transformer-lens", "transformers", "torch")
    return {n: md.version(n) for n in names}


def cmd_feature_data(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    t0 = time.perf_counter()
    features = [int(f) for f in args.features.split(",") if f.strip()]
    tokens = load_file(args.tokens)["input_ids"].to(torch.int64)
    hf_model, tokenizer = load_hf(Path(args.model))
    tl_model = load_tl(hf_model, tokenizer, n_ctx=max(2048, tokens.shape[1]))
    sae, norms = load_sae(Path(args.sae), args.fold_w_dec_norm)
    layer = int(sae.cfg.metadata.hook_name.split(".")[1])
    check = tl_check(tl_model, hf_model, tokens[: args.check_sequences], layer)
    del hf_model
    load_s = time.perf_counter() - t0
    data, acts, run_s = run_dashboard(args, tl_model, sae, tokens, features)

    from sae_dashboard.utils_fns import get_decode_html_safe_fn

    decode = get_decode_html_safe_fn(tokenizer, html=False)  # the strings its HTML shows
    out = {
        "versions": versions(),
        "settings": settings(args, data),
        "tokens_shape": list(tokens.shape),
        "hook_name": sae.cfg.metadata.hook_name,
        "decoder_norm_range": norms,
        "tl_check": check,
        "seconds": {
            "load": round(load_s, 2),
            "run": round(run_s, 2),
            "total": round(time.perf_counter() - t0, 2),
        },  # fmt: skip
        "features": [
            feature_json(f, data.feature_data_dict[f], acts[f], tokens, decode, args.buffer_pair)
            for f in features
        ],  # fmt: skip
    }
    path = Path(args.out)
    path.write_text(json.dumps(out, indent=1) + "\n")
    tensors = {f"acts_{f}": a.contiguous() for f, a in acts.items()}
    save_file({**tensors, "input_ids": tokens.contiguous()},
              str(path.with_suffix(".acts.safetensors")))  # fmt: skip
    print(f"wrote {path} ({len(features)} features, run {run_s:.1f} s)", file=sys.stderr)


def parse_buffer(text: str) -> tuple[int, int] | None:
    if text.strip().lower() == "none":
        return None
    before, after = (int(x) for x in text.split(","))
    return before, after


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("feature-data")
    f.add_argument("--model", required=True)
    f.add_argument("--sae", required=True)
    f.add_argument("--tokens", required=True)
    f.add_argument("--features", required=True)
    f.add_argument("--out", required=True)
    f.add_argument("--top", type=int, default=10)
    f.add_argument("--logit-rows", type=int, default=10)
    f.add_argument(
        "--buffer",
        default="none",
        help="'none' (every position eligible, window = the sequence) or B,A",
    )
    f.add_argument("--ignore-tokens", default="", help="token ids SAEDashboard masks to 0")
    f.add_argument("--fold-w-dec-norm", choices=("skip", "force"), default="skip")
    f.add_argument("--minibatch-tokens", type=int, default=64)
    f.add_argument("--check-sequences", type=int, default=4)
    args = p.parse_args(argv)
    args.buffer_pair = parse_buffer(args.buffer)
    args.ignore_list = [int(t) for t in args.ignore_tokens.split(",") if t.strip()]
    cmd_feature_data(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
