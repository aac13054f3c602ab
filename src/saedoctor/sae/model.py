"""One SAE module for every architecture saedoctor reads: relu, topk, batchtopk, jumprelu, gated.

Weights follow SPEC §1: `W_enc [d_in, d_sae]`, `b_enc [d_sae]`, `W_dec [d_sae, d_in]`,
`b_dec [d_in]`, plus `threshold` (jumprelu, batchtopk in threshold mode) and the gated
`b_gate`, `r_mag`, `b_mag`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from saedoctor.errors import InputError
from saedoctor.sae.codes import Codes
from saedoctor.sae.site import Site

ARCHITECTURES = ("relu", "topk", "batchtopk", "jumprelu", "gated")
SPARSE_ARCHITECTURES = ("topk", "batchtopk")


@dataclass
class SAEConfig:
    architecture: str
    d_in: int
    d_sae: int
    k: int | None = None
    apply_b_dec_to_input: bool = True
    site: Site | None = None
    model_name: str | None = None
    dtype: str = "float32"
    # Free-form provenance: training corpus, token count, trainer config, source format.
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise InputError(
                f"SAE architecture {self.architecture!r}: "
                f"expected one of {', '.join(ARCHITECTURES)}"
            )
        if self.d_in <= 0 or self.d_sae <= 0:
            raise InputError(f"SAE shape d_in={self.d_in}, d_sae={self.d_sae}: expected positive")
        if self.architecture == "topk" and not self.k:
            raise InputError("topk SAE config: expected a positive `k`")
        if self.k is not None and not 0 < self.k <= self.d_sae:
            raise InputError(f"SAE k={self.k}: expected 1..d_sae ({self.d_sae})")


class SAE(nn.Module):
    """Sparse autoencoder: `encode` gives `Codes`, `decode` the reconstruction."""

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dtype = getattr(torch, cfg.dtype)
        d_in, d_sae = cfg.d_in, cfg.d_sae
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae, dtype=dtype))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, dtype=dtype))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(d_in, dtype=dtype))
        self.threshold: nn.Parameter | None = None
        if cfg.architecture == "jumprelu":
            self.threshold = nn.Parameter(torch.zeros(d_sae, dtype=dtype))
        if cfg.architecture == "gated":
            self.b_gate = nn.Parameter(torch.zeros(d_sae, dtype=dtype))
            self.r_mag = nn.Parameter(torch.zeros(d_sae, dtype=dtype))
            self.b_mag = nn.Parameter(torch.zeros(d_sae, dtype=dtype))

    # -- properties -------------------------------------------------------------------
    @property
    def site(self) -> Site | None:
        return self.cfg.site

    @property
    def is_sparse(self) -> bool:
        """Whether `encode` returns top-k codes (values + indices)."""
        return self.cfg.architecture in SPARSE_ARCHITECTURES and self.threshold is None

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    def set_threshold(self, threshold: torch.Tensor) -> None:
        """Batchtopk in threshold mode (SAELens/dictionary_learning export a global threshold)."""
        t = torch.as_tensor(threshold, dtype=self.dtype).reshape(-1)
        self.threshold = nn.Parameter(t.expand(self.cfg.d_sae).clone())

    # -- forward pieces ---------------------------------------------------------------
    def sae_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)
        return x - self.b_dec if self.cfg.apply_b_dec_to_input else x

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return self.sae_input(x) @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> Codes:
        """`x [n, d_in]` → codes; top-k architectures return sparse codes."""
        arch = self.cfg.architecture
        if arch == "gated":
            return Codes(self._gated_acts(self.sae_input(x)), None, self.cfg.d_sae)
        pre = self.pre_acts(x)
        if self.threshold is not None:
            acts = F.relu(pre) * (pre > self.threshold)
            return Codes(acts, None, self.cfg.d_sae)
        if arch in SPARSE_ARCHITECTURES:
            top = pre.topk(self.cfg.k, dim=-1, sorted=False)
            return Codes(F.relu(top.values), top.indices, self.cfg.d_sae)
        return Codes(F.relu(pre), None, self.cfg.d_sae)

    def _gated_acts(self, sae_in: torch.Tensor) -> torch.Tensor:
        gate = (sae_in @ self.W_enc + self.b_gate) > 0
        mag = F.relu(sae_in @ (self.W_enc * self.r_mag.exp()) + self.b_mag)
        return mag * gate

    def decode(self, codes: Codes) -> torch.Tensor:
        if codes.indices is None:
            return codes.values @ self.W_dec + self.b_dec
        # embedding_bag sums k decoder rows per token without an [n, k, d_in] temporary.
        out = F.embedding_bag(
            codes.indices, self.W_dec, per_sample_weights=codes.values, mode="sum"
        )
        return out + self.b_dec

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Codes]:
        codes = self.encode(x)
        return self.decode(codes), codes

    # -- state ------------------------------------------------------------------------
    def weights(self) -> dict[str, torch.Tensor]:
        """The normalised state dict (SPEC §1 names)."""
        return {k: v.detach() for k, v in self.state_dict().items()}

    def load_weights(self, tensors: dict[str, torch.Tensor], source: str) -> None:
        """Copy `tensors` in after checking names, shapes and finiteness; errors name `source`."""
        if "threshold" in tensors and self.threshold is None:
            t = tensors["threshold"]
            if t.numel() not in (1, self.cfg.d_sae):
                raise InputError(
                    f"{source}: tensor threshold has shape {tuple(t.shape)}, "
                    f"expected () or ({self.cfg.d_sae},)"
                )
            self.set_threshold(t)
            # A global (scalar) threshold was just broadcast to one per feature.
            tensors = {**tensors, "threshold": self.threshold.detach()}
        expected = self.state_dict()
        missing = sorted(set(expected) - set(tensors))
        if missing:
            raise InputError(f"{source}: missing SAE tensor(s) {', '.join(missing)}")
        for name, ref in expected.items():
            t = tensors[name]
            if tuple(t.shape) != tuple(ref.shape):
                raise InputError(
                    f"{source}: tensor {name} has shape {tuple(t.shape)}, "
                    f"expected {tuple(ref.shape)}"
                )
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise InputError(f"{source}: tensor {name} contains NaN or Inf values")
        with torch.no_grad():
            for name, param in self.named_parameters():
                param.copy_(tensors[name].to(param.dtype))


def build_sae(cfg: SAEConfig, tensors: dict[str, torch.Tensor], source: str) -> SAE:
    """An SAE from a config and normalised tensors."""
    sae = SAE(cfg)
    sae.load_weights(tensors, source)
    return sae
