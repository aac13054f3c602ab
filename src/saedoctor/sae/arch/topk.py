"""TopK (Gao et al. 2024): the k largest pre-activations of each token, through a ReLU."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from saedoctor.sae.arch.base import Architecture
from saedoctor.sae.codes import Codes


class TopK(Architecture):
    name = "topk"
    needs_k = True

    def encode_pre(self, sae: Any, pre: torch.Tensor) -> Codes:
        top = pre.topk(sae.cfg.k, dim=-1, sorted=False)
        return Codes(F.relu(top.values), top.indices, sae.cfg.d_sae)

    def sparse_codes(self, sae: Any) -> bool:
        return sae.threshold is None

    def train_codes(self, trainer: Any, pre: torch.Tensor, terms: dict) -> tuple:
        top = pre.topk(trainer.cfg.top_k, dim=-1, sorted=False)
        return F.relu(top.values), top.indices


ARCHITECTURE = TopK()
