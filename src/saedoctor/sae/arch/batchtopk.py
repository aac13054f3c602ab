"""BatchTopK (Bussmann et al. 2024): the n·k largest activations of a whole batch while
training; exported with a global threshold θ (a running mean of the smallest kept
activation), so inference is per token. Without θ it encodes as TopK."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from saedoctor.sae.arch.topk import TopK

THRESHOLD_DECAY = 0.99


class BatchTopK(TopK):
    name = "batchtopk"

    def train_codes(self, trainer: Any, pre: torch.Tensor, terms: dict) -> tuple:
        acts = F.relu(pre)
        n = pre.shape[0]
        kth = _batch_kth(trainer, acts.detach().flatten(), n * trainer.cfg.top_k)
        kept = acts * (acts.detach() >= kth).to(acts.dtype)
        with torch.no_grad():
            _track_threshold(trainer, kept.detach(), acts.device)
        return kept, None

    def finish_export(self, trainer: Any, sae: Any, scale: float) -> None:
        if float(trainer.batchtopk_threshold) > 0:
            sae.set_threshold(torch.tensor(float(trainer.batchtopk_threshold) / scale))


def _batch_kth(trainer: Any, values: torch.Tensor, k: int) -> torch.Tensor:
    if trainer.reducer is None:
        return values.topk(k, sorted=False).values.min()
    # Under torchrun the whole micro-batch's k-th value, over every rank.
    return trainer.reducer.kth_largest(values, k * trainer.reducer.size)


def _track_threshold(trainer: Any, kept: torch.Tensor, device: torch.device) -> None:
    positive = kept[kept > 0]
    low = float(positive.min()) if positive.numel() else math.inf
    if trainer.reducer is not None:
        low = trainer.reducer.min(low, device)
    if not math.isfinite(low):
        return
    old = float(trainer.batchtopk_threshold)
    new = low if old < 0 else THRESHOLD_DECAY * old + (1 - THRESHOLD_DECAY) * low
    trainer.batchtopk_threshold = torch.tensor(new, dtype=torch.float64)


ARCHITECTURE = BatchTopK()
