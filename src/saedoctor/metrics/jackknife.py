"""The delete-one-block jackknife: a 95 % interval for a statistic from its values with each
sequence block left out in turn (Quenouille–Tukey; for ratio estimators such as variance
explained and loss recovered it needs no distributional form, and it costs no second pass).

    se² = (k − 1)/k · Σ_b (θ₋b − mean θ₋)²,   interval = θ̂ ± t_{0.975, k−1} · se

over the k non-empty blocks. Per-feature densities near 0 or 1 (a dead feature fires in no
block: se = 0) get a Wilson score interval instead, on an effective token count shrunk by
the jackknife's design effect (how much more the density varies between blocks than
independent tokens would), so a feature never seen is "below 3.8 / n", not "exactly 0".
"""

from __future__ import annotations

import math

import torch
from scipy import stats

from saedoctor.thresholds import INTERVAL_LEVEL

METHOD = "delete-one-block jackknife over {blocks} sequence blocks, t interval ({level:.0%})"
DENSITY_METHOD = "Wilson score interval on the jackknife's effective token count ({level:.0%})"


def method_text(n_blocks: int) -> str:
    return METHOD.format(blocks=n_blocks, level=INTERVAL_LEVEL)


def _t_quantile(k: int) -> float:
    return float(stats.t.ppf(0.5 + INTERVAL_LEVEL / 2, k - 1))


def interval(estimate: float | None, left_out: torch.Tensor,
             used: torch.Tensor) -> list[float] | None:  # fmt: skip
    """[low, high] around `estimate` from the leave-one-block-out values `left_out [B]` of
    the blocks in `used [B]` (bool); None with fewer than 2 blocks or a non-finite value."""
    if estimate is None or not math.isfinite(estimate):
        return None
    values = left_out[used].double()
    k = values.numel()
    if k < 2 or not bool(torch.isfinite(values).all()):
        return None
    se = math.sqrt((k - 1) / k * float((values - values.mean()).pow(2).sum()))
    half = _t_quantile(k) * se
    return [estimate - half, estimate + half]


def standard_errors(left_out: torch.Tensor, used: torch.Tensor) -> torch.Tensor:
    """Jackknife standard errors of many statistics at once: `left_out [B, m]` → `[m]`."""
    values = left_out[used].double()
    k = values.shape[0]
    if k < 2:
        return torch.full(values.shape[1:], math.nan, dtype=torch.float64)
    return ((k - 1) / k * (values - values.mean(0)).pow(2).sum(0)).sqrt()


def density_intervals(counts: torch.Tensor, tokens: int, se: torch.Tensor) -> torch.Tensor:
    """`[m, 2]` Wilson intervals of densities `counts / tokens` with the jackknife's `se`:
    the effective count is `tokens` divided by the design effect (never multiplied)."""
    p = counts.double() / tokens
    binomial_var = p * (1 - p) / tokens
    design = torch.where(binomial_var > 0, se.pow(2) / binomial_var.clamp(min=1e-300), 1.0)
    n_eff = tokens / design.clamp(min=1.0)
    z = float(stats.norm.ppf(0.5 + INTERVAL_LEVEL / 2))
    denom = 1 + z * z / n_eff
    centre = (p + z * z / (2 * n_eff)) / denom
    half = z * torch.sqrt(p * (1 - p) / n_eff + z * z / (4 * n_eff * n_eff)) / denom
    return torch.stack(((centre - half).clamp(min=0.0), (centre + half).clamp(max=1.0)), 1)


def independent_difference(va: float, ra: list[float], vb: float,
                           rb: list[float]) -> list[float]:  # fmt: skip
    """Interval of `vb − va` from two independent intervals (normal approximation: each
    half-width over z is a standard error, and the variances add)."""
    z = float(stats.norm.ppf(0.5 + INTERVAL_LEVEL / 2))
    se = math.hypot((ra[1] - ra[0]) / (2 * z), (rb[1] - rb[0]) / (2 * z))
    return [vb - va - z * se, vb - va + z * se]


def two_sample_interval(estimate: float, left_out_a: torch.Tensor, used_a: torch.Tensor,
                        left_out_b: torch.Tensor, used_b: torch.Tensor) -> list[float] | None:
    """A statistic of two independent samples (two corpora), each left out one block at a
    time with the other whole: the two jackknife variances add (normal interval)."""
    se_a = standard_errors(left_out_a[:, None], used_a)[0]
    se_b = standard_errors(left_out_b[:, None], used_b)[0]
    if not (torch.isfinite(se_a) and torch.isfinite(se_b)):
        return None
    z = float(stats.norm.ppf(0.5 + INTERVAL_LEVEL / 2))
    half = z * math.hypot(float(se_a), float(se_b))
    return [estimate - half, estimate + half]
