"""`MetricSuite`: every streaming SPEC §2 metric of one SAE in one mergeable object.

Not covered here: `loss_recovered`, `kl_score` (need the language model) and
`first_letter_absorption` (probe based).
"""

from __future__ import annotations

from typing import Any

import torch

from saedoctor.metrics.absorption import decoder_absorption
from saedoctor.metrics.diversity import Diversity
from saedoctor.metrics.features import FeatureStats
from saedoctor.metrics.histogram import density_histogram
from saedoctor.metrics.reconstruction import Reconstruction
from saedoctor.sae.codes import Codes

_CONFIG_KEYS = ("d_in", "d_sae", "always_on_threshold", "dense_threshold", "dead_threshold",
                "diversity_top")  # fmt: skip


class MetricSuite:
    """Feature statistics, diversity and reconstruction, updated batch by batch."""

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        *,
        always_on_threshold: float = 0.8,
        dense_threshold: float = 0.1,
        dead_threshold: float = 0.0005,
        diversity_top: int = 10,
    ) -> None:
        self.d_in, self.d_sae = d_in, d_sae
        self.features = FeatureStats(d_sae, always_on_threshold, dense_threshold, dead_threshold)
        self.diversity = Diversity(diversity_top)
        self.reconstruction = Reconstruction(d_in)

    @property
    def config(self) -> dict[str, float]:
        f = self.features
        values = (self.d_in, self.d_sae, f.always_on_threshold, f.dense_threshold,
                  f.dead_threshold, self.diversity.top)  # fmt: skip
        return dict(zip(_CONFIG_KEYS, values, strict=True))

    @torch.no_grad()
    def update(
        self, x: torch.Tensor, x_hat: torch.Tensor, codes: Codes, seq_ids: torch.Tensor
    ) -> None:
        """Add one batch of counted tokens; each sequence must lie wholly in one batch."""
        self._check(x, x_hat, codes, seq_ids)
        self.reconstruction.update(x, x_hat)
        self.features.update(codes)
        self.diversity.update(codes, seq_ids)

    def _check(
        self, x: torch.Tensor, x_hat: torch.Tensor, codes: Codes, seq_ids: torch.Tensor
    ) -> None:
        # All checks before any accumulator moves, so a bad batch leaves the state untouched.
        n = x.shape[0]
        if x.dim() != 2 or x.shape[1] != self.d_in or x_hat.shape != x.shape:
            raise ValueError(
                f"x {tuple(x.shape)} / x_hat {tuple(x_hat.shape)}: expected [n, {self.d_in}]"
            )
        if codes.d_sae != self.d_sae or codes.n_tokens != n:
            raise ValueError(
                f"codes: {codes.n_tokens} tokens x {codes.d_sae}, expected {n} x {self.d_sae}"
            )
        if seq_ids.shape != (n,):
            raise ValueError(f"seq_ids shape {tuple(seq_ids.shape)}: expected ({n},)")

    def merge(self, other: MetricSuite) -> MetricSuite:
        """Fold `other` (another shard) into this suite, in place; returns self."""
        if other.config != self.config:
            raise ValueError(f"cannot merge MetricSuite {other.config} into {self.config}")
        self.features.merge(other.features)
        self.diversity.merge(other.diversity)
        self.reconstruction.merge(other.reconstruction)
        return self

    def compute(self, W_dec: torch.Tensor | None = None) -> dict[str, Any]:
        """Flat dict of plain Python values; absorption only when `W_dec [d_sae, d_in]` is given."""
        feats = self.features.compute()
        density = feats.pop("density")
        mean_act = feats.pop("mean_activation_when_active")
        out: dict[str, Any] = {
            **feats,
            **self.diversity.compute(),
            **self.reconstruction.compute(),
            "density": density.tolist(),
            "density_histogram": density_histogram(density),
            "mean_activation_when_active": mean_act.tolist(),
        }
        out.update(self._absorption(W_dec, density))
        return out

    def _absorption(self, W_dec: torch.Tensor | None, density: torch.Tensor) -> dict[str, Any]:
        if W_dec is None:
            return {"absorption": None, "absorption_method": None, "absorption_features": 0,
                    "absorption_reason": "no decoder weights given"}  # fmt: skip
        if W_dec.shape != (self.d_sae, self.d_in):
            raise ValueError(f"W_dec {tuple(W_dec.shape)}: expected ({self.d_sae}, {self.d_in})")
        alive = density >= self.features.dead_threshold
        return decoder_absorption(W_dec, alive.to(W_dec.device))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every accumulator and the config as float64/int64 CPU tensors (safetensors-ready)."""
        d = {f"config.{k}": _config_tensor(v) for k, v in self.config.items()}
        d |= self.features.state_dict("features.")
        d |= self.diversity.state_dict("diversity.")
        d |= self.reconstruction.state_dict("reconstruction.")
        return d

    def load_state_dict(self, d: dict[str, torch.Tensor]) -> None:
        for key, value in self.config.items():
            saved = d.get(f"config.{key}")
            if saved is None or saved.item() != value:
                got = None if saved is None else saved.item()
                raise ValueError(f"metric state config {key}={got}, this suite has {value}")
        self.features.load_state_dict(d, "features.")
        self.diversity.load_state_dict(d, "diversity.")
        self.reconstruction.load_state_dict(d, "reconstruction.")


def _config_tensor(v: float) -> torch.Tensor:
    dtype = torch.int64 if isinstance(v, int) else torch.float64
    return torch.tensor(v, dtype=dtype)
