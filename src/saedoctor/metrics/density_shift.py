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
