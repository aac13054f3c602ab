"""JumpReLU (Rajamanoharan et al. 2024): `f = pre · H(pre − θ)` with a learnt threshold θ
per feature; trained with straight-through threshold gradients and its own L0 term."""

from __future__ import annotations

from typing import Any

import torch

from saedoctor.sae.arch.base import Architecture


def _rect(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLUFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, theta, bandwidth):  # type: ignore[override]
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return z * (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        z, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_z = grad * (z > theta).to(z.dtype)
        grad_theta = (-(theta / eps) * _rect((z - theta) / eps) * grad).sum(0)
        return grad_z, grad_theta, None


class _StepFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, theta, bandwidth):  # type: ignore[override]
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        z, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_theta = (-(1.0 / eps) * _rect((z - theta) / eps) * grad).sum(0)
        return None, grad_theta, None


class JumpReLU(Architecture):
    name = "jumprelu"
    encoder_init_scale = 0.1
    owns_l0_penalty = True
    extra_params = ("threshold",)

    def init_train_params(self, cfg: Any, d_sae: int) -> dict[str, torch.Tensor]:
        return {"threshold": torch.full((d_sae,), cfg.jumprelu_init_threshold)}

    def train_codes(self, trainer: Any, pre: torch.Tensor, terms: dict) -> tuple:
        cfg = trainer.cfg
        theta, bandwidth = trainer.params["threshold"], cfg.jumprelu_bandwidth
        if cfg.sparsity_penalty > 0:
            l0 = _StepFn.apply(pre, theta, bandwidth).sum(-1).mean()
            # every loss term is a fraction of the target width (d_out; d_in for an SAE)
            terms["l0"] = cfg.sparsity_penalty * l0 / trainer.d_out
        return _JumpReLUFn.apply(pre, theta, bandwidth), None

    def export_tensors(self, trainer: Any, scale: float) -> dict[str, torch.Tensor]:
        return {"threshold": trainer.params["threshold"].detach().float().cpu() / scale}


ARCHITECTURE = JumpReLU()
