"""95 % intervals of the suite's metrics from its per-block sums (metrics/blocked.py).

Ratios (variance explained, FVU, MSE, cosine, error share, L0, diversity) get the
delete-one-block jackknife. Counts of thresholded densities (always-on, dense, dead) are not
smooth statistics; they get the interval the features' density intervals imply: from the
features certainly past the threshold to those possibly past it, and the features whose
density interval straddles a threshold are listed as uncertain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from saedoctor.metrics import jackknife
from saedoctor.metrics.blocked import BlockedStats

# Uncertain dead features can be thousands in a large dictionary: the report lists this many.
MAX_UNCERTAIN_IDS = 200


@dataclass(frozen=True)
class Thresholds:
    always_on: float
    dense: float
    dead: float


def _left_out(total: torch.Tensor, per_block: torch.Tensor) -> torch.Tensor:
    return total - per_block


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return num / torch.where(den != 0, den, torch.nan)


def reconstruction_left_out(b: BlockedStats) -> dict[str, torch.Tensor]:
    """Each reconstruction ratio with block i left out, `[B]` each."""
    n_b = b.tokens.double()
    n = n_b.sum()
    mean = (b.mean * n_b[:, None]).sum(0) / n.clamp(min=1)
    m2 = b.m2.sum() + ((b.mean - mean).pow(2).sum(1) * n_b).sum()
    rest = (n - n_b).clamp(min=1)
    mean_rest = (n * mean - n_b[:, None] * b.mean) / rest[:, None]
    m2_rest = m2 - b.m2 - (b.mean - mean_rest).pow(2).sum(1) * n_b * rest / n.clamp(min=1)
    sse_rest = _left_out(b.sse.sum(), b.sse)
    energy_rest = m2_rest + rest * mean_rest.pow(2).sum(1)
    fvu = _ratio(sse_rest, m2_rest)
    return {"variance_explained": 1 - fvu, "fvu": fvu, "mse": sse_rest / rest,
            "cossim": _left_out(b.cos.sum(), b.cos) / rest,
            "error_share": _ratio(sse_rest, energy_rest)}  # fmt: skip


def suite_intervals(b: BlockedStats, values: dict[str, Any], th: Thresholds,
                    diversity_key: str) -> dict[str, Any]:  # fmt: skip
    """{"intervals": {metric: [low, high]}, "uncertain_features": {...}, "interval_method"}."""
    used = b.tokens > 0
    rest = (b.tokens.sum() - b.tokens).double().clamp(min=1)
    left_out = reconstruction_left_out(b)
    left_out["l0"] = _left_out(b.nonzero.sum(), b.nonzero).double() / rest
    seq_used = b.sequences > 0
    div = _ratio(_left_out(b.distinct.sum(), b.distinct).double(),
                 _left_out(b.sequences.sum(), b.sequences).double())  # fmt: skip
    out = {key: jackknife.interval(values.get(key), series, used)
           for key, series in left_out.items()}  # fmt: skip
    out[diversity_key] = jackknife.interval(values.get(diversity_key), div, seq_used)
    blocks = block_values({**left_out, diversity_key: div}, out, used)
    density = density_bounds(b, used)
    counts, uncertain = count_intervals(density, th, b.d_sae)
    out.update(counts)
    return {"intervals": {k: v for k, v in out.items() if v is not None},
            "interval_blocks": {"tokens": b.tokens.tolist(), "left_out": blocks},
            "uncertain_features": uncertain,
            "interval_method": jackknife.method_text(int(used.sum())),
            "density_interval_method": jackknife.DENSITY_METHOD.format(
                level=jackknife.INTERVAL_LEVEL)}  # fmt: skip


def block_values(left_out: dict[str, torch.Tensor], intervals: dict[str, Any],
                 used: torch.Tensor) -> dict[str, list[float | None]]:  # fmt: skip
    """Each metric's leave-one-block-out values (null for an empty block), for paired tests
    between two reports on the same tokens (report/significance.py)."""
    return {key: [float(v) if ok and torch.isfinite(v) else None
                  for v, ok in zip(series.double().cpu(), used.tolist(), strict=True)]
            for key, series in left_out.items() if intervals.get(key) is not None}


def density_bounds(b: BlockedStats, used: torch.Tensor) -> torch.Tensor:
    """`[d_sae, 2]` interval of every feature's density."""
    tokens = int(b.tokens.sum())
    fires = b.fires.cpu()
    total = fires.sum(0)
    rest = (tokens - b.tokens.cpu()).double().clamp(min=1)
    left_out = (total[None, :] - fires).double() / rest[:, None]
    se = jackknife.standard_errors(left_out, used.cpu())
    return jackknife.density_intervals(total, tokens, torch.nan_to_num(se, nan=0.0))


def count_intervals(bounds: torch.Tensor, th: Thresholds,
                    d_sae: int) -> tuple[dict[str, list[float]], dict[str, Any]]:  # fmt: skip
    """Intervals of the thresholded counts, and the features that could go either way."""
    low, high = bounds[:, 0], bounds[:, 1]
    out = {"always_on_count": [int((low > th.always_on).sum()), int((high > th.always_on).sum())],
           "dense_count": [int((low > th.dense).sum()), int((high > th.dense).sum())],
           "dead_count": [int((high < th.dead).sum()), int((low < th.dead).sum())]}  # fmt: skip
    out["dead_pct"] = [100.0 * v / d_sae for v in out["dead_count"]]
    always_on = ((low <= th.always_on) & (high > th.always_on)).nonzero().flatten()
    dead = ((low < th.dead) & (high >= th.dead)).nonzero().flatten()
    mid = bounds.mean(1)
    dead_sorted = dead[torch.argsort((mid[dead] - th.dead).abs())][:MAX_UNCERTAIN_IDS]
    uncertain = {"always_on": always_on.tolist(), "dead_count": int(dead.numel()),
                 "dead": dead_sorted.tolist()}  # fmt: skip
    return out, uncertain
