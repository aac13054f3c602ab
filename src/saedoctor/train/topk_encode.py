"""TopK encoding and sparse decoding for training, with backward passes that only touch the k
selected latents.

`pre = (x - b_dec) @ W_enc + b_enc`, the k largest entries of each row, through a ReLU: the
same values and gradients as writing it in autograd, but autograd would scatter the codes'
gradient into a dense `[n, d_sae]` matrix and multiply it by `(x - b_dec)ᵀ`, as many FLOPs as
the forward matmul although only `n·k` of its entries are nonzero. Here the encoder's weight
gradient is gathered latent by latent (`embedding_bag` over the tokens each latent fired on,
`2·n·k·d_in` FLOPs; latent-major, the layout the trainer stores W_enc in, so a row-major W_enc
gets a copy), `b_enc`'s by an index-add, and `b_dec`'s (through the centring) is
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
                b_enc: torch.Tensor, k: int, order: LatentOrder | None
                ) -> tuple[torch.Tensor, ...]:  # fmt: skip
        centred = xs - b_dec if b_dec is not None else xs
        pre = torch.addmm(b_enc, centred, w_enc)
        top = pre.topk(k, dim=-1, sorted=False)
        vals = F.relu(top.values)
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(top.indices)
        ctx.save_for_backward(centred, w_enc, top.indices, vals)
        ctx.has_b_dec = b_dec is not None
        ctx.order = order
        return vals, top.indices, pre

    @staticmethod
    def backward(ctx: Any, grad_vals: torch.Tensor | None, _grad_idx: Any,
                 grad_pre: torch.Tensor | None) -> tuple[Any, ...]:  # fmt: skip
        centred, w_enc, idx, vals = ctx.saved_tensors
        d_sae = w_enc.shape[1]
        if grad_vals is None and grad_pre is None:
            return None, None, None, None, None, None
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
                grad_w = _sparse_weight_grad(centred, flat, gflat, idx.shape[1], d_sae,
                                             ctx.order)  # fmt: skip
                if grad_w.stride() != w_enc.stride():  # a row-major W_enc
                    grad_w = grad_w.contiguous()
        grad_b_dec = -(w_enc @ grad_b_enc) if ctx.has_b_dec and ctx.needs_input_grad[1] else None
        return None, grad_b_dec, grad_w, grad_b_enc, None, None


def _sparse_weight_grad(centred: torch.Tensor, flat: torch.Tensor, gflat: torch.Tensor,
                        k: int, d_sae: int, order: LatentOrder | None) -> torch.Tensor:  # fmt: skip
    """`centredᵀ @ G` for the `[n, d_sae]` matrix G holding `gflat` at the `flat` latents
    (k per token, row-major), latent-major like the trainer's W_enc."""
    return latent_rows(centred, flat, gflat, k, d_sae, order).T


class LatentOrder:
    """One batch's firings sorted by latent, computed on first use and kept: the decoder's and
    the encoder's backward passes of a step group the same `[n, k]` latent ids."""

    def __init__(self) -> None:
        self._sorted: tuple[torch.Tensor, torch.Tensor] | None = None

    def of(self, flat: torch.Tensor, d_sae: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(the firings' positions in latent order, each latent's first position)."""
        if self._sorted is None:
            order = flat.argsort(stable=True)  # stable: a fixed summation order, run to run
            counts = torch.bincount(flat, minlength=d_sae)
            offsets = torch.zeros_like(counts)
            offsets[1:] = counts.cumsum(0)[:-1]
            self._sorted = (order, offsets)
        return self._sorted


def latent_rows(rows: torch.Tensor, flat: torch.Tensor, weights: torch.Tensor, k: int,
                d_sae: int, order: LatentOrder | None = None) -> torch.Tensor:  # fmt: skip
    """`[d_sae, d]`: each latent's weighted sum of the `rows [n, d]` of the tokens it fired on
    (`flat`: the `[n, k]` latent ids row-major, `weights` the matching values); a latent that
    never fired gets zeros."""
    positions, offsets = (order or LatentOrder()).of(flat, d_sae)
    return F.embedding_bag(positions // k, rows, offsets, mode="sum",
                           per_sample_weights=weights[positions])  # fmt: skip


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, vals: torch.Tensor, idx: torch.Tensor, w_dec: torch.Tensor,
                order: LatentOrder | None) -> torch.Tensor:  # fmt: skip
        ctx.save_for_backward(vals, idx, w_dec)
        ctx.order = order
        return F.embedding_bag(idx, w_dec, per_sample_weights=vals, mode="sum")

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        vals, idx, w_dec = ctx.saved_tensors
        n, k = idx.shape
        flat = idx.reshape(-1)
        grad_vals = grad_w = None
        if ctx.needs_input_grad[0]:  # each code's gradient: ∂out[t] · W_dec[idx[t, j]]
            bags = torch.arange(n, device=idx.device)
            grad_vals = torch.ops.aten._embedding_bag_per_sample_weights_backward(
                grad_out, w_dec, flat, bags * k, bags.repeat_interleave(k), 0, -1
            ).reshape(n, k)
        if ctx.needs_input_grad[2]:
            grad_w = latent_rows(grad_out, flat, vals.reshape(-1), k, w_dec.shape[0], ctx.order)
        return grad_vals, None, grad_w, None


def sparse_decode(vals: torch.Tensor, idx: torch.Tensor, w_dec: torch.Tensor,
                  order: LatentOrder | None = None) -> torch.Tensor:  # fmt: skip
    """`Σ_j vals[t, j] · W_dec[idx[t, j]]` (`[n, d]`, no bias), as `F.embedding_bag` computes
    it, with a backward that builds W_dec's gradient latent by latent: autograd's zero-fills a
    dense `[d_sae, d]` matrix and scatters into it token by token. `order`: shared with the
    `topk_encode` call that chose `idx`."""
    return _SparseDecode.apply(vals, idx, w_dec, order)


def topk_encode(xs: torch.Tensor, b_dec: torch.Tensor | None, w_enc: torch.Tensor,
                b_enc: torch.Tensor, k: int, order: LatentOrder | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(codes `[n, k]` after the ReLU, their latent ids `[n, k]`, pre-activations `[n, d_sae]`)
    of `xs [n, d_in]`, centred by `b_dec` unless it is None. `xs` gets no gradient. `order`:
    the ids sorted by latent, shared with `sparse_decode` of the same codes."""
    if xs.requires_grad:
        raise ValueError("topk_encode: the input activations are data, not trained")
    vals, idx, pre = _TopKEncode.apply(xs, b_dec, w_enc, b_enc, k, order)
    return vals, idx, pre
