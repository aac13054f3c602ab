"""The model's unembedding as a logit lens reads it: what a direction written to the residual
stream does to the next-token logits.

As SAEDashboard (through TransformerLens' `fold_ln`) does it: the final norm's weight is
folded into the unembedding. The norm's scale and any biases are left out: they act on the
whole stream, not on one direction. (TransformerLens' `center_unembed` shifts every logit of
a direction by the same amount; the caller centres the logits it shows.)"""

from __future__ import annotations

from dataclasses import dataclass

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


VOCAB_CHUNK = 8192  # rows of the head per block: a bf16 head is never copied whole to float32


@dataclass(frozen=True)
class Unembedding:
    """`W_U = head.weightᵀ · diag(norm weight)`, never built: the model's own head weight
    `[vocab, d_model]` (a reference, not a copy) and the norm's weight `[d_model]` or None."""

    head: torch.Tensor
    scale: torch.Tensor | None

    @property
    def d_model(self) -> int:
        return int(self.head.shape[1])

    @property
    def vocab(self) -> int:
        return int(self.head.shape[0])

    @torch.no_grad()
    def logits(self, rows: torch.Tensor) -> torch.Tensor:
        """`rows [m, d_model] · W_U`: `[m, vocab]` float32 on the CPU (the scale folded into
        the rows, which is the same product)."""
        rows = rows.detach().to(self.head.device, torch.float32)
        if self.scale is not None:
            rows = rows * self.scale.to(rows)
        blocks = [rows @ self.head[i : i + VOCAB_CHUNK].T.float()
                  for i in range(0, self.vocab, VOCAB_CHUNK)]  # fmt: skip
        return torch.cat(blocks, dim=1).cpu()

    @torch.no_grad()
    def gram(self) -> torch.Tensor:
        """`W_U·W_Uᵀ [d_model, d_model]` float64 on the CPU, summed over blocks of the head."""
        gram = torch.zeros(self.d_model, self.d_model, dtype=torch.float64)
        for i in range(0, self.vocab, VOCAB_CHUNK):
            block = self.head[i : i + VOCAB_CHUNK].detach().cpu().double()
            gram += block.T @ block
        if self.scale is not None:
            s = self.scale.detach().cpu().double()
            gram *= s[:, None] * s[None, :]
        return gram


def unembedding(model: nn.Module) -> Unembedding | None:
    """The model's unembedding, or None when its head is not found."""
    norm, head = final_norm_and_head(model)
    weight = getattr(head, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        return None
    scale = getattr(norm, "weight", None)
    fits = isinstance(scale, torch.Tensor) and scale.shape == (weight.shape[1],)
    return Unembedding(weight.detach(), scale.detach() if fits else None)
