"""Log10-density histogram for reports (never-fired features are counted apart: log10 0 = -inf)."""

from __future__ import annotations

from typing import Any

import torch

LOG10_MIN, LOG10_MAX, BINS = -8.0, 0.0, 32


def density_histogram(density: torch.Tensor, bins: int = BINS) -> dict[str, Any]:
    """Counts of log10(density) over `bins` equal bins on [-8, 0]; values below -8 go in bin 0."""
    fired = density[density > 0].double()
    logd = fired.log10().clamp(LOG10_MIN, LOG10_MAX)
    counts = torch.histc(logd, bins=bins, min=LOG10_MIN, max=LOG10_MAX) if fired.numel() else None
    edges = torch.linspace(LOG10_MIN, LOG10_MAX, bins + 1, dtype=torch.float64)
    return {
        "scale": "log10",
        "edges": edges.tolist(),
        "counts": [0] * bins if counts is None else [int(c) for c in counts.tolist()],
        "never_fired": int((density == 0).sum()),
    }
