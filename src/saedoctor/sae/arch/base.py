"""What an activation function of a sparse dictionary declares: its extra parameters, how it
encodes at inference, and how it makes codes while training."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from saedoctor.sae.codes import Codes


class Architecture:
    """Base: a ReLU-like activation with no parameters beyond the four core tensors.

    `sae` arguments are a `sae.model.Dictionary` and `trainer` ones a
    `train.sae_trainer.TrainableSAE`, both duck-typed: the model imports this registry, and
    the trainer sits above this package in the flow."""

    name: str = ""
    needs_k: bool = False  # the config must give k (top-k selection)
    trainable: bool = True
    # The first batches of a dense-start activation fire about half the latents: a 0.1
    # encoder keeps that first reconstruction near the data's scale (SAELens'
    # decoder_init_norm); top-k picks its k latents whatever the scale.
    encoder_init_scale: float = 1.0
    owns_l0_penalty: bool = False  # the activation computes its own L0 term (JumpReLU)
    # Per-feature tensors the inference module holds besides W_enc, b_enc, W_dec, b_dec.
    extra_params: tuple[str, ...] = ()

    # -- inference ------------------------------------------------------------------------
    def encode(self, sae: Any, x: torch.Tensor) -> Codes:
        pre = sae.pre_acts(x)
        if sae.threshold is not None:  # thresholded export (jumprelu, batchtopk's global θ)
            return Codes(F.relu(pre) * (pre > sae.threshold), None, sae.cfg.d_sae)
        return self.encode_pre(sae, pre)

    def encode_pre(self, sae: Any, pre: torch.Tensor) -> Codes:
        return Codes(F.relu(pre), None, sae.cfg.d_sae)

    def sparse_codes(self, sae: Any) -> bool:
        """Whether `encode` returns top-k codes (values + indices)."""
        return False

    # -- training -------------------------------------------------------------------------
    def init_train_params(self, cfg: Any, d_sae: int) -> dict[str, torch.Tensor]:
        """Extra trainable tensors (e.g. JumpReLU's thresholds)."""
        return {}

    def train_codes(
        self, trainer: Any, pre: torch.Tensor, terms: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(values, indices or None for dense) of a micro-batch's pre-activations; may add
        loss terms to `terms`."""
        return F.relu(pre), None

    def export_tensors(self, trainer: Any, scale: float) -> dict[str, torch.Tensor]:
        """Extra tensors of the exported dictionary, on the raw activation scale."""
        return {}

    def finish_export(self, trainer: Any, sae: Any, scale: float) -> None:
        """Anything set on the exported module after its tensors are loaded."""

    def export_k(self, trainer: Any) -> int | None:
        return trainer.cfg.top_k if self.needs_k else None
