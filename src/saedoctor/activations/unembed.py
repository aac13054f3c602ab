"""The model's unembedding as a logit lens reads it: what a direction written to the residual
stream does to the next-token logits.

As SAEDashboard (through TransformerLens' `fold_ln`) does it: the final norm's weight is
folded into the unembedding. The norm's scale and any biases are left out: they act on the
whole stream, not on one direction. (TransformerLens' `center_unembed` shifts every logit of
a direction by the same amount; the caller centres the logits it shows.)"""

from __future__ import annotations

import torch
from torch import nn

from saedoctor.activations.sites import _get_path

FINAL_NORMS = ("model.norm", "model.language_model.norm", "transformer.ln_f",
               "gpt_neox.final_layer_norm")  # fmt: skip
HEADS = ("lm_head", "embed_out")


def final_norm_and_head(model: nn.Module) -> tuple[nn.Module | None, nn.Module | None]:
    norm = next((m for p in FINAL_NORMS if (m := _get_path(model, p)) is not None), None)
    head = next((m for p in HEADS if (m := _get_path(model, p)) is not None), None)
    return norm, head


@torch.no_grad()
def logit_lens_unembedding(model: nn.Module) -> torch.Tensor | None:
    """`[d_model, vocab]` float32 on the CPU, the final norm's weight folded in; None when
    the model's head is not found."""
    norm, head = final_norm_and_head(model)
    weight = getattr(head, "weight", None)
    if weight is None:
        return None
    w_u = weight.detach().float().cpu().T  # [d_model, vocab]
    scale = getattr(norm, "weight", None)
    if isinstance(scale, torch.Tensor) and scale.shape == (w_u.shape[0],):
        w_u = w_u * scale.detach().float().cpu()[:, None]
    return w_u
