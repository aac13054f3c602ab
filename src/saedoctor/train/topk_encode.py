"""TopK encoding for training, with a backward pass that only touches the k selected latents.

`pre = (x - b_dec) @ W_enc + b_enc`, the k largest entries of each row, through a ReLU: the
same values and gradients as writing it in autograd, but autograd would scatter the codes'
gradient into a dense `[n, d_sae]` matrix and multiply it by `(x - b_dec)ᵀ`, as many FLOPs as
the forward matmul although only `n·k` of its entries are nonzero. Here the encoder's weight
gradient is gathered latent by latent (`embedding_bag` over the tokens each latent fired on,
`2·n·k·d_in` FLOPs), `b_enc`'s by an index-add, and `b_dec`'s (through the centring) is
`-W_enc @ ∂b_enc`. When a loss term also reads the dense pre-activations (AuxK with dead
latents), their gradient is added to the codes' and the dense product is taken, as before.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


class _TopKEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, xs: torch.Tensor, b_dec: torch.Tensor | None, w_enc: torch.Tensor,
                b_enc: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:  # fmt: skip
        centred = xs - b_dec if b_dec is not None else xs
        pre = torch.addmm(b_enc, centred, w_enc)
        top = pre.topk(k, dim=-1, sorted=False)
        vals = F.relu(top.values)
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(top.indices)
        ctx.save_for_backward(centred, w_enc, top.indices, vals)
        ctx.has_b_dec = b_dec is not None
        return vals, top.indices, pre

    @staticmethod
    def backward(ctx: Any, grad_vals: torch.Tensor | None, _grad_idx: Any,
                 grad_pre: torch.Tensor | None) -> tuple[Any, ...]:  # fmt: skip
        centred, w_enc, idx, vals = ctx.saved_tensors
        d_sae = w_enc.shape[1]
        if grad_vals is None and grad_pre is None:
            return None, None, None, None, None
        g = (grad_vals * (vals > 0)) if grad_vals is not None else torch.zeros_like(vals)
        if grad_pre is not None:  # a term read the dense pre-activations: dense product
            dense = grad_pre.scatter_add(1, idx, g)
            grad_b_enc = dense.sum(0)
            grad_w = centred.T @ dense if ctx.needs_input_grad[2] else None
        else:
            flat = idx.reshape(-1)
            gflat = g.reshape(-1)
            grad_b_enc = gflat.new_zeros(d_sae).index_add_(0, flat, gflat)
            grad_w = None
            if ctx.needs_input_grad[2]:
                grad_w = _sparse_weight_grad(centred, flat, gflat, idx.shape[1], d_sae)
        grad_b_dec = -(w_enc @ grad_b_enc) if ctx.has_b_dec and ctx.needs_input_grad[1] else None
        return None, grad_b_dec, grad_w, grad_b_enc, None


def _sparse_weight_grad(centred: torch.Tensor, flat: torch.Tensor, gflat: torch.Tensor,
                        k: int, d_sae: int) -> torch.Tensor:  # fmt: skip
    """`centredᵀ @ G` for the `[n, d_sae]` matrix G holding `gflat` at the `flat` latents
    (k per token, row-major): each latent's row is the weighted sum of the tokens it fired on."""
    order = flat.argsort(stable=True)  # stable: a fixed summation order, run to run
    counts = torch.bincount(flat, minlength=d_sae)
    offsets = torch.zeros_like(counts)
    offsets[1:] = counts.cumsum(0)[:-1]
    rows = F.embedding_bag(order // k, centred, offsets, mode="sum",
                           per_sample_weights=gflat[order])  # fmt: skip
    return rows.T.contiguous()  # [d_in, d_sae], the layout of W_enc


def topk_encode(xs: torch.Tensor, b_dec: torch.Tensor | None, w_enc: torch.Tensor,
                b_enc: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes `[n, k]` after the ReLU, their latent ids `[n, k]`, pre-activations `[n, d_sae]`)
    of `xs [n, d_in]`, centred by `b_dec` unless it is None. `xs` gets no gradient."""
    if xs.requires_grad:
        raise ValueError("topk_encode: the input activations are data, not trained")
    vals, idx, pre = _TopKEncode.apply(xs, b_dec, w_enc, b_enc, k)
    return vals, idx, pre
