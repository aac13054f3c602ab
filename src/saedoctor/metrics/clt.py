"""Reconstruction of a cross-layer transcoder: one streaming `Reconstruction` per target block
(its MLP output against the sum of every lower block's decoder), plus the set's error share.

`error_share` per block is Σ‖y − ŷ‖² / Σ‖y‖²: the fraction of the MLP output left in the
error term, which an attribution graph turns into error nodes. The set-level value pools
every block's sums (Σ over blocks of sse / Σ over blocks of ‖y‖²), so blocks with large MLP
outputs weigh more, as they do in the graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from saedoctor.metrics.reconstruction import Reconstruction


class CLTReconstruction:
    """Streaming, mergeable per-block reconstruction metrics of a CLT's outputs."""

    def __init__(self, layers: int | Sequence[int], d_model: int) -> None:
        """`layers`: the target blocks measured (an int n means blocks 0..n-1)."""
        ids = list(range(layers)) if isinstance(layers, int) else sorted(set(layers))
        if not ids or min(ids) < 0:
            raise ValueError(f"layers {layers!r}: expected at least one block index >= 0")
        self.d_model = d_model
        self.by_layer = {layer: Reconstruction(d_model) for layer in ids}

    @property
    def config(self) -> dict[str, Any]:
        """The constructor's arguments: an empty twin to load another shard's state into."""
        return {"layers": self.layers, "d_model": self.d_model}

    @property
    def layers(self) -> list[int]:
        return list(self.by_layer)

    def update(self, target_layer: int, y: torch.Tensor, y_hat: torch.Tensor) -> None:
        """Add one batch of block `target_layer`'s MLP output `y` and its reconstruction."""
        if target_layer not in self.by_layer:
            raise ValueError(f"block {target_layer}: this accumulator measures {self.layers}")
        self.by_layer[target_layer].update(y, y_hat)

    def merge(self, other: CLTReconstruction) -> CLTReconstruction:
        """Fold `other` (another shard) in, in place; returns self."""
        if other.layers != self.layers or other.d_model != self.d_model:
            raise ValueError(f"cannot merge CLTReconstruction(blocks {other.layers}, d_model="
                             f"{other.d_model}) into blocks {self.layers}, "
                             f"d_model={self.d_model}")  # fmt: skip
        for layer, rec in self.by_layer.items():
            rec.merge(other.by_layer[layer])
        return self

    def compute(self) -> dict[str, Any]:
        """`{"layers": {block: Reconstruction metrics, or None if it saw no token},
        "error_share": pooled over blocks, "tokens": {block: count}}`."""
        seen = {layer: rec for layer, rec in self.by_layer.items() if int(rec.tokens) > 0}
        if not seen:
            raise ValueError("no tokens seen: CLT reconstruction metrics are undefined")
        sse = sum(float(rec.sse) for rec in seen.values())
        energy = sum(rec.energy() for rec in seen.values())
        return {
            "layers": {
                layer: rec.compute() if layer in seen else None
                for layer, rec in self.by_layer.items()
            },
            "error_share": sse / energy if energy != 0 else None,
            "tokens": {layer: int(rec.tokens) for layer, rec in self.by_layer.items()},
        }

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Every block's state under `{prefix}layer{L}.`, plus the block list to check on load."""
        d = {f"{prefix}layers": torch.tensor(self.layers, dtype=torch.int64)}
        for layer, rec in self.by_layer.items():
            d |= rec.state_dict(f"{prefix}layer{layer}.")
        return d

    def load_state_dict(self, d: dict[str, torch.Tensor], prefix: str = "") -> None:
        saved = d.get(f"{prefix}layers")
        if saved is None or saved.tolist() != self.layers:
            got = None if saved is None else saved.tolist()
            raise ValueError(f"metric state {prefix}layers={got}, this accumulator has "
                             f"{self.layers}")  # fmt: skip
        for layer, rec in self.by_layer.items():
            rec.load_state_dict(d, f"{prefix}layer{layer}.")


__all__ = ["CLTReconstruction"]
