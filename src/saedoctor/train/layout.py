"""The trainer stores W_enc `[d_in, d_sae]` latent-major (its sparse gradient comes out latent
by latent, train/topk_encode.py): its transpose is the contiguous view that fused Adam and
collectives, which want one dense layout, work on without copying it there and back."""

from __future__ import annotations

import torch


def dense_view(t: torch.Tensor) -> torch.Tensor:
    """`t`, or its transpose when only that is contiguous (a view sharing `t`'s memory)."""
    if t.is_contiguous() or t.dim() != 2 or not t.T.is_contiguous():
        return t
    return t.T
