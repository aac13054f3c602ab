"""Per-feature firing statistics: density, always-on / dense / dead features, L0.

Counts are exact int64; activation sums are float64. On sparse (top-k) codes the hot path
is a `bincount` over the indices of positive values, so no `[n, d_sae]` tensor is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from saedoctor.metrics._state import check_codes, export, follow_device, restore
from saedoctor.sae.codes import Codes
from saedoctor.thresholds import ALWAYS_ON_DENSITY, DEAD_DENSITY, DENSE_DENSITY

_STATE = ("fire_count", "act_sum", "act_sq_sum", "tokens", "nonzero")


@dataclass(frozen=True)
class Entries:
    """Every activation `> 0` of a batch, flat: feature ids, values, and how to read a
    per-row tensor at each entry (its row's block, for the intervals)."""

    feats: torch.Tensor
    vals: torch.Tensor
    mask: torch.Tensor | None  # sparse codes: the [n, k] mask the entries were taken with
    rows: torch.Tensor | None  # dense codes: each entry's row

    def per_entry(self, per_row: torch.Tensor) -> torch.Tensor:
        if self.mask is not None:  # a masked select, as cheap as taking the entries
            return per_row[:, None].expand_as(self.mask)[self.mask]
        assert self.rows is not None
        return per_row[self.rows]


def positive_entries(codes: Codes) -> Entries:
    """Feature ids and values of every activation `> 0` (flat, any order)."""
    if codes.indices is not None:
        mask = codes.values > 0
        return Entries(codes.indices[mask], codes.values[mask], mask, None)
    # nonzero() keeps memory at O(n * L0) instead of a float64 copy of the dense codes.
    rows, cols = (codes.values > 0).nonzero(as_tuple=True)
    return Entries(cols, codes.values[rows, cols], None, rows)


class FeatureStats:
    """Streaming, mergeable per-feature statistics (SPEC §2: density … l0)."""

    def __init__(
        self,
        d_sae: int,
        always_on_threshold: float = ALWAYS_ON_DENSITY,
        dense_threshold: float = DENSE_DENSITY,
        dead_threshold: float = DEAD_DENSITY,
    ) -> None:
        if d_sae <= 0:
            raise ValueError(f"d_sae={d_sae}: expected positive")
        self.d_sae = d_sae
        self.always_on_threshold = float(always_on_threshold)
        self.dense_threshold = float(dense_threshold)
        self.dead_threshold = float(dead_threshold)
        self.fire_count = torch.zeros(d_sae, dtype=torch.int64)
        self.act_sum = torch.zeros(d_sae, dtype=torch.float64)
        # Σ f_i² gives each feature's share of the reconstruction energy (always-on reports).
        self.act_sq_sum = torch.zeros(d_sae, dtype=torch.float64)
        self.tokens = torch.zeros((), dtype=torch.int64)
        self.nonzero = torch.zeros((), dtype=torch.int64)

    @property
    def config(self) -> tuple[int, float, float, float]:
        return (self.d_sae, self.always_on_threshold, self.dense_threshold, self.dead_threshold)

    @torch.no_grad()
    def update(self, codes: Codes) -> Entries:
        """Fold one batch; its activations > 0 (for the intervals' block counts)."""
        check_codes(codes, self.d_sae)
        follow_device(self, _STATE, codes.values.device)
        entries = positive_entries(codes)
        feats, vals = entries.feats, entries.vals
        self.fire_count += torch.bincount(feats, minlength=self.d_sae)
        vals = vals.double()
        self.act_sum += torch.bincount(feats, weights=vals, minlength=self.d_sae)
        self.act_sq_sum += torch.bincount(feats, weights=vals * vals, minlength=self.d_sae)
        self.tokens += codes.n_tokens
        # l0 counts f != 0 (SPEC), which differs from "fired" only for negative codes.
        self.nonzero += torch.count_nonzero(codes.values)
        return entries

    def merge(self, other: FeatureStats) -> FeatureStats:
        if other.config != self.config:
            raise ValueError(f"cannot merge FeatureStats {other.config} into {self.config}")
        dev = self.fire_count.device
        self.fire_count += other.fire_count.to(dev)
        self.act_sum += other.act_sum.to(dev)
        self.act_sq_sum += other.act_sq_sum.to(dev)
        self.tokens += other.tokens.to(dev)
        self.nonzero += other.nonzero.to(dev)
        return self

    def density(self) -> torch.Tensor:
        """`[d_sae]` float64 firing frequency."""
        return self.fire_count.double().cpu() / self._n_tokens()

    def compute(self) -> dict[str, Any]:
        n = self._n_tokens()
        count = self.fire_count.cpu()
        density = count.double() / n
        mean_act = self.act_sum.cpu() / count.clamp(min=1).double()
        dead = density < self.dead_threshold
        return {
            "density": density,
            "always_on_features": self._always_on(count, density),
            "always_on_count": int((density > self.always_on_threshold).sum()),
            "dense_count": int((density > self.dense_threshold).sum()),
            "dead_count": int(dead.sum()),
            "dead_pct": 100.0 * float(dead.sum()) / self.d_sae,
            "never_fired_count": int((count == 0).sum()),
            "tokens_seen": n,
            "l0": int(self.nonzero) / n,
            "mean_activation_when_active": mean_act,
        }

    def _always_on(self, count: torch.Tensor, density: torch.Tensor) -> list[int]:
        ids = torch.nonzero(density > self.always_on_threshold).flatten().tolist()
        counts = count.tolist()
        # Sort on the exact integer counts so equal densities tie-break by id.
        return sorted(ids, key=lambda i: (-counts[i], i))

    def _n_tokens(self) -> int:
        n = int(self.tokens)
        if n == 0:
            raise ValueError("no tokens seen: feature statistics are undefined")
        return n

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        return export(self, _STATE, prefix)

    def load_state_dict(self, d: dict[str, torch.Tensor], prefix: str = "") -> None:
        restore(self, _STATE, prefix, d)
