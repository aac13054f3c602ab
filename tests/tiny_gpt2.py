"""A tiny GPT-2 whose MLPs are linear (what the `linear_gpt2` fixture of conftest.py returns),
and a float64 reference for the loss of that model with some MLP outputs replaced."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import torch

from saedoctor.activations.model import LoadedModel

D, N_LAYERS = 32, 3
LOUD_LAYER = 1  # its MLP output is scaled 30x: zero-ablating it costs loss worth recovering
CONTEXT, BATCH_SIZE, TOKENS = 32, 4, 2048  # the token batches every reference here reads

# (layer, that layer's MLP input in the patched run, every layer's MLP input in the clean
# run) -> the layer's new MLP output. Inputs are float64 `[B, T, D]`; the patched run's dict
# holds the layers at or below `layer` (a forward hook sees them in order).
Replace = Callable[[int, dict[int, torch.Tensor], dict[int, torch.Tensor]], torch.Tensor]


def build_linear_gpt2() -> LoadedModel:
    """GPT-2 with an identity activation: each MLP is affine, `x W_fc W_proj + b`."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from conftest import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=D, n_layer=N_LAYERS, n_head=4,
                        n_positions=128, activation_function="linear",
                        bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval().requires_grad_(False)
    with torch.no_grad():
        model.transformer.h[LOUD_LAYER].mlp.c_proj.weight.mul_(30.0)
    return LoadedModel(model, tokenizer, "tiny-linear-gpt2", N_LAYERS, D)


def reference_batches(loaded: LoadedModel, corpus: Path | str) -> list:
    """The token batches a diagnosis with context 32, batch size 4 and 2048 tokens reads."""
    from saedoctor.activations.batches import token_batches
    from saedoctor.activations.corpus import iter_documents

    return list(token_batches(loaded.tokenizer, iter_documents(str(corpus)), context=CONTEXT,
                              batch_size=BATCH_SIZE, max_tokens=TOKENS))  # fmt: skip


@torch.no_grad()
def spliced_loss_reference(loaded: LoadedModel, corpus: Path | str,
                           replace: dict[int, Replace]) -> dict[str, float]:  # fmt: skip
    """Float64 throughout (a float64 copy of the model, plain hooks on its MLPs): CE and
    KL(clean || patched) of the model with the MLP output of every layer in `replace`
    replaced in one forward at counted positions (the model's own output elsewhere), and
    with all those MLP outputs zeroed at every position; the keys of a report's downstream
    metrics (SAELens' conventions, as metrics/downstream.py states them)."""
    model = copy.deepcopy(loaded.model).double()
    sums: dict[str, list] = {"clean": [], "sae": [], "ablated": []}
    kls: dict[str, list] = {"sae": [], "ablated": []}
    for batch in reference_batches(loaded, corpus):
        ids, counted = batch.input_ids, batch.counted
        logp = _batch_logp(model, ids, counted, replace)
        mask = counted[:, :-1] & batch.real()[:, 1:]
        for name, lp in logp.items():
            nll = -lp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
            sums[name].append(nll[mask])
        p = logp["clean"].exp()
        for name in kls:
            kls[name].append((p * (logp["clean"] - logp[name])).sum(-1)[counted])
    ce = {k: torch.cat(v) for k, v in sums.items()}
    clean, sae, ablated = (float(ce[k].mean()) for k in ("clean", "sae", "ablated"))
    kl_sae, kl_ablated = (float(torch.cat(kls[k]).mean()) for k in ("sae", "ablated"))
    return {"loss_recovered": (ablated - sae) / (ablated - clean), "ce_clean": clean,
            "ce_sae": sae, "ce_ablated": ablated,
            "kl_score": (kl_ablated - kl_sae) / kl_ablated, "kl_sae": kl_sae,
            "kl_ablated": kl_ablated, "downstream_tokens": len(ce["clean"])}  # fmt: skip


def _batch_logp(model, ids: torch.Tensor, counted: torch.Tensor,
                replace: dict[int, Replace]) -> dict[str, torch.Tensor]:  # fmt: skip
    """One batch's clean, patched ("sae") and zeroed ("ablated") float64 log-probabilities."""
    mlps = [block.mlp for block in model.transformer.h]
    clean_x: dict[int, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda m, a, o, i=i: clean_x.update({i: a[0]}))
             for i, m in enumerate(mlps)]  # fmt: skip
    logp = {"clean": _logp(model, ids, hooks)}
    live_x: dict[int, torch.Tensor] = {}

    def spliced(layer: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        live_x[layer] = x
        out = y.clone()
        out[counted] = replace[layer](layer, live_x, clean_x)[counted].to(out.dtype)
        return out

    hooks = [m.register_forward_hook(lambda m, a, o, i=i: live_x.update({i: a[0]}))
             for i, m in enumerate(mlps) if i not in replace]  # fmt: skip
    hooks += [mlps[i].register_forward_hook(lambda m, a, o, i=i: spliced(i, a[0], o))
              for i in replace]  # fmt: skip
    logp["sae"] = _logp(model, ids, hooks)
    hooks = [mlps[i].register_forward_hook(lambda m, a, o: torch.zeros_like(o)) for i in replace]
    logp["ablated"] = _logp(model, ids, hooks)
    return logp


def _logp(model, ids: torch.Tensor, hooks: list) -> torch.Tensor:
    """Float64 log-probabilities of one forward, then the hooks removed."""
    try:
        return model(input_ids=ids).logits.log_softmax(-1)
    finally:
        for h in hooks:
            h.remove()
