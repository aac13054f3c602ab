"""How a feature-density vector moves between two corpora (training-data mismatch)."""

from __future__ import annotations

from typing import Any

import torch


def jensen_shannon_bits(p: torch.Tensor, q: torch.Tensor) -> float:
    """JSD of two non-negative vectors normalised to distributions, in bits (0..1)."""
    p = p.double() / p.double().sum().clamp_min(1e-300)
    q = q.double() / q.double().sum().clamp_min(1e-300)
    m = (p + q) / 2

    def kl(a: torch.Tensor) -> torch.Tensor:
        nz = a > 0
        return (a[nz] * (a[nz] / m[nz]).log2()).sum()

    return float((kl(p) + kl(q)) / 2)


def density_shift(a: torch.Tensor, b: torch.Tensor, dead_threshold: float) -> dict[str, Any]:
    """JSD of the firing distributions and the features alive on only one side."""
    alive_a, alive_b = a >= dead_threshold, b >= dead_threshold
    ratio = (b + 1e-9) / (a + 1e-9)
    return {
        "density_jsd": jensen_shannon_bits(a, b),
        "appeared": torch.nonzero(alive_b & ~alive_a).flatten().tolist(),
        "disappeared": torch.nonzero(alive_a & ~alive_b).flatten().tolist(),
        "top_increases": ratio.topk(min(10, ratio.numel())).indices.tolist(),
        "top_decreases": ratio.topk(min(10, ratio.numel()), largest=False).indices.tolist(),
    }


def jsd_interval(fires_a: torch.Tensor, tokens_a: torch.Tensor, fires_b: torch.Tensor,
                 tokens_b: torch.Tensor, estimate: float) -> list[float] | None:
    """95 % interval of the density JSD between two corpora from their per-block firing
    counts `[B, d_sae]` and token counts `[B]`: each corpus's blocks left out in turn with the
    other corpus whole; the two jackknife variances add (metrics/jackknife.py)."""
    from saedoctor.metrics.jackknife import two_sample_interval

    total_a, total_b = fires_a.sum(0).double(), fires_b.sum(0).double()

    def left_out(fires: torch.Tensor, total: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return torch.tensor([jensen_shannon_bits(total - fires[i], other)
                             for i in range(fires.shape[0])], dtype=torch.float64)  # fmt: skip

    return two_sample_interval(estimate, left_out(fires_a.double(), total_a, total_b),
                               tokens_a > 0, left_out(fires_b.double(), total_b, total_a),
                               tokens_b > 0)  # fmt: skip
