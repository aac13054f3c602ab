"""Gated SAE (Rajamanoharan et al. 2024): a gate `(x W_enc + b_gate) > 0` times a magnitude
`relu(x (W_enc ⊙ exp r_mag) + b_mag)`. Read for diagnosis; not trained by saedoctor."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from saedoctor.sae.arch.base import Architecture
from saedoctor.sae.codes import Codes


class Gated(Architecture):
    name = "gated"
    trainable = False
    extra_params = ("b_gate", "r_mag", "b_mag")

    def encode(self, sae: Any, x: torch.Tensor) -> Codes:
        sae_in = sae.sae_input(x)
        gate = (sae_in @ sae.W_enc + sae.b_gate) > 0
        mag = F.relu(sae_in @ (sae.W_enc * sae.r_mag.exp()) + sae.b_mag)
        return Codes(mag * gate, None, sae.cfg.d_sae)


ARCHITECTURE = Gated()
