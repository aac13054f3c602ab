"""Decoder-cosine "absorption" (redundancy): SAEBench `average_max_decoder_cosine_sim`.

SAEBench (`sae_bench/evals/core/main.py`, `calculate_max_cosine_sim`) normalises the decoder
rows, masks the diagonal with -inf and takes the *signed* max over the other features (no
abs), then averages over all features. SPEC §2 asks for the same signed max but over alive
features only, so dead features neither count nor act as partners.

Exact and chunked: each chunk of rows is multiplied against all alive rows in float32 (fast),
never a full d_sae x d_sae matrix; the best few float32 candidates of every row are then
re-scored in float64 and the best kept, so the result matches a float64 computation unless
more than `_CANDIDATES` partners sit within float32 rounding (~1e-6) of the true max.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

METHOD = "decoder_cosine_exact_chunked"
_CANDIDATES = 4


def decoder_absorption(
    W_dec: torch.Tensor, alive: torch.Tensor, chunk_size: int = 2048
) -> dict[str, Any]:
    """Mean over alive features of the max signed cosine of its decoder row with another's.

    `W_dec [d_sae, d_in]`, `alive` bool `[d_sae]`. A zero decoder row has cosine 0 with all.
    """
    if W_dec.dim() != 2 or alive.shape != (W_dec.shape[0],):
        raise ValueError(f"W_dec {tuple(W_dec.shape)} / alive {tuple(alive.shape)}: mismatch")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size={chunk_size}: expected positive")
    n_alive = int(alive.sum())
    if n_alive < 2:
        return {
            "absorption": None,
            "absorption_method": METHOD,
            "absorption_features": n_alive,
            "absorption_reason": f"{n_alive} alive feature(s): need at least 2",
        }
    rows64 = F.normalize(W_dec.detach()[alive.to(W_dec.device)].double(), dim=1)
    rows32 = rows64.float()
    starts = range(0, n_alive, chunk_size)
    best = torch.cat([_chunk_max(rows64, rows32, s, min(s + chunk_size, n_alive)) for s in starts])
    return {
        "absorption": float(best.mean()),
        "absorption_method": METHOD,
        "absorption_features": n_alive,
    }


@torch.no_grad()
def _chunk_max(rows64: torch.Tensor, rows32: torch.Tensor, start: int, end: int) -> torch.Tensor:
    sims = rows32[start:end] @ rows32.T
    own = torch.arange(start, end, device=sims.device)
    sims[own - start, own] = float("-inf")
    cand = sims.topk(min(_CANDIDATES, rows64.shape[0] - 1), dim=1).indices
    exact = torch.einsum("cd,ckd->ck", rows64[start:end], rows64[cand])
    return exact.max(dim=1).values
