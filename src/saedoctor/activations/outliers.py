"""Activation-outlier severity of a site: γ = ‖μ‖ / ‖σ‖ (Simon, Adams & Zou, arXiv 2605.31518).

`μ` is the mean activation and `σ` the vector of per-dimension standard deviations, so
`‖σ‖² = E‖x − μ‖²` (the total per-token variance). With γ ≥ 1 the token-independent mean
outweighs all per-token variation: a freshly initialised encoder reads mostly `μ`, every
latent's pre-activation is shifted by its alignment with `μ`, and the latents anti-aligned
with it never fire (the paper's γ predicts the dead fraction at initialisation, Spearman
0.89 for TopK over 454 model-layer pairs). Subtracting the mean removes the shift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from saedoctor.activations.moments import Moments, moments

# γ at which the mean outweighs all per-token variation combined. For a TopK SAE with b_dec
# at zero, a latent with an average alignment to μ then needs a ~3.5σ token deviation to
# make the top 0.7 % (k 32 of 4 608), i.e. fires on under 0.05 % of tokens: dead at birth.
# GPT-2 sits below 1 (near-zero death in the paper), AlphaFold3 at ~15 (72 % dead).
GAMMA_HIGH = 1.0


@dataclass(frozen=True)
class OutlierSeverity:
    """γ and its two parts, over the rows it was measured on."""

    gamma: float
    mean_norm: float  # ‖μ‖
    std_norm: float  # ‖σ‖ = sqrt(E‖x − μ‖²)
    rows: int

    @property
    def high(self) -> bool:
        return self.gamma >= GAMMA_HIGH


def outlier_severity(x: torch.Tensor) -> OutlierSeverity:
    """γ of rows `x [n, d]` (float64 sums); NaN when fewer than two rows or no variance."""
    return severity_of(moments(x))


def severity_of(m: Moments) -> OutlierSeverity:
    """γ from the moments of the rows (shared with the trainer's initialisation)."""
    if m.rows < 2:
        return OutlierSeverity(float("nan"), float("nan"), float("nan"), m.rows)
    std_norm = math.sqrt(m.total_variance)
    mean_norm = float(m.mean.norm())
    gamma = mean_norm / std_norm if std_norm > 0 else float("nan")
    return OutlierSeverity(gamma, mean_norm, std_norm, m.rows)
