"""One sparse dictionary for every kind saedoctor reads and trains: an encoder reading an
input site, a decoder writing to an output site, an optional linear skip, and an activation
from the registry (`sae.arch`: relu, topk, batchtopk, jumprelu, gated).

An SAE is the case input site = output site (`d_out = d_in`, no skip); a per-layer
transcoder reads `mlp_in` at block L and writes `mlp_out` at block L (`d_out` may differ,
`W_skip [d_in, d_out]` optional). Weights follow SPEC §1: `W_enc [d_in, d_sae]`,
`b_enc [d_sae]`, `W_dec [d_sae, d_out]`, `b_dec [d_out]`, plus the activation's own tensors
(`threshold`; gated `b_gate`, `r_mag`, `b_mag`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from saedoctor.errors import InputError
from saedoctor.sae.arch import ARCHITECTURES, TOPK_ARCHITECTURES, get_architecture
from saedoctor.sae.arch.base import Architecture
from saedoctor.sae.codes import Codes
from saedoctor.sae.site import Site

SPARSE_ARCHITECTURES = TOPK_ARCHITECTURES


@dataclass
class SAEConfig:
    """Shape, activation and placement of a dictionary. `site` is where the encoder reads;
    `output_site` where the decoder writes (None: the same site, an SAE)."""

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
    output_site: Site | None = None
    d_out: int | None = None  # None: d_in
    skip: bool = False  # a linear skip `x @ W_skip` added to the output

    def __post_init__(self) -> None:
        get_architecture(self.architecture)
        if self.d_in <= 0 or self.d_sae <= 0 or self.d_target <= 0:
            raise InputError(
                f"dictionary shape d_in={self.d_in}, d_sae={self.d_sae}, "
                f"d_out={self.d_target}: expected positive"
            )
        if get_architecture(self.architecture).needs_k and not self.k:
            raise InputError(f"{self.architecture} config: expected a positive `k`")
        if self.k is not None and not 0 < self.k <= self.d_sae:
            raise InputError(f"SAE k={self.k}: expected 1..d_sae ({self.d_sae})")
        if self.apply_b_dec_to_input and self.d_target != self.d_in:
            raise InputError(
                f"apply_b_dec_to_input with d_in={self.d_in} != d_out={self.d_target}: "
                "a transcoder's output bias cannot be subtracted from its input"
            )

    @property
    def d_target(self) -> int:
        """Width of what the decoder writes."""
        return self.d_out if self.d_out is not None else self.d_in

    @property
    def is_transcoder(self) -> bool:
        """Whether the decoder writes somewhere other than where the encoder reads."""
        moved = self.output_site is not None and self.output_site != self.site
        return moved or self.skip or self.d_target != self.d_in


class Dictionary(nn.Module):
    """Sparse dictionary: `encode` gives `Codes`, `decode` the output without the skip
    term, `forward` the whole output (decoder + skip)."""

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.architecture: Architecture = get_architecture(cfg.architecture)
        dtype = getattr(torch, cfg.dtype)
        d_in, d_sae, d_out = cfg.d_in, cfg.d_sae, cfg.d_target
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae, dtype=dtype))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, dtype=dtype))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_out, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(d_out, dtype=dtype))
        self.threshold: nn.Parameter | None = None
        self.W_skip: nn.Parameter | None = None
        for name in self.architecture.extra_params:
            setattr(self, name, nn.Parameter(torch.zeros(d_sae, dtype=dtype)))
        if cfg.skip:
            self.W_skip = nn.Parameter(torch.zeros(d_in, d_out, dtype=dtype))

    # -- properties -------------------------------------------------------------------
    @property
    def site(self) -> Site | None:
        """Where the encoder reads."""
        return self.cfg.site

    @property
    def output_site(self) -> Site | None:
        """Where the decoder writes: the site its output is checked against."""
        return self.cfg.output_site or self.cfg.site

    @property
    def is_transcoder(self) -> bool:
        return self.cfg.is_transcoder

    @property
    def is_sparse(self) -> bool:
        """Whether `encode` returns top-k codes (values + indices)."""
        return self.architecture.sparse_codes(self)

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    def set_threshold(self, threshold: torch.Tensor) -> None:
        """A global or per-feature threshold (batchtopk's export, jumprelu's θ)."""
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
        return self.architecture.encode(self, x)

    def decode(self, codes: Codes) -> torch.Tensor:
        """The decoder's output `[n, d_out]` (no skip term)."""
        if codes.indices is None:
            return codes.values @ self.W_dec + self.b_dec
        # embedding_bag sums k decoder rows per token without an [n, k, d_out] temporary.
        out = F.embedding_bag(
            codes.indices, self.W_dec, per_sample_weights=codes.values, mode="sum"
        )
        return out + self.b_dec

    def skip_term(self, x: torch.Tensor) -> torch.Tensor | None:
        """`x @ W_skip`, or None without a skip connection."""
        return None if self.W_skip is None else x.to(self.dtype) @ self.W_skip

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Codes]:
        codes = self.encode(x)
        out = self.decode(codes)
        skip = self.skip_term(x)
        return (out if skip is None else out + skip), codes

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


# The dictionary is the SAE in most of the code base, where input and output are one site.
SAE = Dictionary
DictionaryConfig = SAEConfig


def build_sae(cfg: SAEConfig, tensors: dict[str, torch.Tensor], source: str) -> Dictionary:
    """A dictionary from a config and normalised tensors."""
    sae = Dictionary(cfg)
    sae.load_weights(tensors, source)
    return sae


__all__ = ["ARCHITECTURES", "SAE", "SAEConfig", "Dictionary", "DictionaryConfig",
           "SPARSE_ARCHITECTURES", "build_sae"]  # fmt: skip
