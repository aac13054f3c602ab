"""Feature activations of a batch of tokens, sparse (top-k) where the architecture allows."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Codes:
    """Activations `f_i(t)` for `n` tokens.

    Sparse form: `values [n, k]` and `indices [n, k]` (a value may be 0 when fewer than k
    features fire). Dense form: `values [n, d_sae]` and `indices is None`.
    """

    values: torch.Tensor
    indices: torch.Tensor | None
    d_sae: int

    @property
    def is_sparse(self) -> bool:
        return self.indices is not None

    @property
    def n_tokens(self) -> int:
        return self.values.shape[0]

    def dense(self) -> torch.Tensor:
        """`[n, d_sae]` activations; allocates the full width, so keep it off hot paths."""
        if self.indices is None:
            return self.values
        out = self.values.new_zeros(self.values.shape[0], self.d_sae)
        return out.scatter_(1, self.indices, self.values)

    def select(self, rows: torch.Tensor) -> Codes:
        """Codes of a subset of tokens (boolean mask or index tensor)."""
        idx = None if self.indices is None else self.indices[rows]
        return Codes(self.values[rows], idx, self.d_sae)
