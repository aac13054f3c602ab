"""Non-finite values (NaN, ±inf) in activations, SAE outputs and logits: found, counted, left out.

An fp16 residual stream overflows to inf, a broken model emits NaN, an SAE's encoder overflows
in fp16: one such row folded into a float64 sum turns every metric into NaN (or, worse, into a
plausible number). So the rows are dropped before they reach an accumulator, and `NonFinite`
counts them per SAE and keeps the first few (sequence, position) pairs so they can be found.

The check on a clean batch is one reduction and one sync (`finite_rows` returns None); the
row-wise mask is only built when that check fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from saedoctor.sae.codes import Codes

KINDS = ("activation_rows", "sae_output_rows", "downstream_positions")
FIRST_POSITIONS = 20  # locations kept per SAE: enough to find the culprit, small in a report
_POS_BITS = 32  # (sequence, position) packed into one int64 key for sorting and dedup


@dataclass
class RowOrigin:
    """Where the rows of a batch come from: row r is position `flat[r] % context` of
    sequence `first_sequence + flat[r] // context` of the run."""

    first_sequence: int
    context: int
    flat: torch.Tensor
    token_ids: torch.Tensor | None = None  # each row's token, when the rows come from text

    def select(self, rows: torch.Tensor) -> RowOrigin:
        tokens = None if self.token_ids is None else self.token_ids[rows]
        return RowOrigin(self.first_sequence, self.context, self.flat[rows], tokens)

    def positions(self) -> torch.Tensor:
        """Each row's position in its sequence."""
        return self.flat % self.context

    def locate(self, rows: torch.Tensor) -> torch.Tensor:
        """`[m, 2]` int64 (sequence, position) of the selected rows, in row order."""
        flat = self.flat[rows].cpu().long()
        return torch.stack((flat // self.context + self.first_sequence, flat % self.context), 1)


def finite_rows(t: torch.Tensor) -> torch.Tensor | None:
    """None when every value of `t [n, ...]` is finite, else the `[n]` mask of finite rows."""
    if bool(torch.isfinite(t).all()):
        return None
    return torch.isfinite(t).flatten(1).all(1)


def finite_output_rows(x_hat: torch.Tensor, codes: Codes) -> torch.Tensor | None:
    """Like `finite_rows`, for an SAE's reconstruction and codes together (one sync)."""
    if bool(torch.isfinite(x_hat).all() & torch.isfinite(codes.values).all()):
        return None
    return torch.isfinite(x_hat).all(1) & torch.isfinite(codes.values).all(1)


def _keys(pairs: torch.Tensor) -> torch.Tensor:
    return (pairs[:, 0] << _POS_BITS) | pairs[:, 1]


class NonFinite:
    """Rows and positions left out of one SAE's metrics, and where the first of them were.

    `first` holds the `keep` smallest distinct (sequence, position) pairs seen, so merging
    two shards gives exactly what one pass over both would."""

    def __init__(self, keep: int = FIRST_POSITIONS) -> None:
        self.keep = keep
        self.counts = dict.fromkeys(KINDS, 0)
        self.first = torch.zeros((0, 2), dtype=torch.int64)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def skip(self, kind: str, bad: torch.Tensor, where: RowOrigin | None) -> None:
        """Count the True entries of the `[n]` mask `bad` as `kind`; `where` locates them
        (None: counted, but not located)."""
        n = int(bad.sum())
        self.counts[kind] += n
        if n and where is not None:
            rows = bad.nonzero().squeeze(1)[: self.keep]
            self._remember(where.locate(rows))

    def _remember(self, pairs: torch.Tensor) -> None:
        keys = torch.unique(torch.cat((_keys(self.first), _keys(pairs))))[: self.keep]
        self.first = torch.stack((keys >> _POS_BITS, keys & ((1 << _POS_BITS) - 1)), 1)

    def merge(self, other: NonFinite) -> NonFinite:
        if other.keep != self.keep:
            raise ValueError(f"cannot merge NonFinite(keep={other.keep}) into keep={self.keep}")
        for kind in KINDS:
            self.counts[kind] += other.counts[kind]
        self._remember(other.first)
        return self

    def compute(self) -> dict[str, Any]:
        """The report's `nonfinite` block (docs/metrics.md)."""
        out: dict[str, Any] = {f"{kind}_skipped": n for kind, n in self.counts.items()}
        out["first_positions"] = self.first.tolist()
        return out

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        d = {f"{prefix}{k}": torch.tensor(n, dtype=torch.int64) for k, n in self.counts.items()}
        d[f"{prefix}keep"] = torch.tensor(self.keep, dtype=torch.int64)
        d[f"{prefix}first_positions"] = self.first.clone()
        return d

    def load_state_dict(self, d: dict[str, torch.Tensor], prefix: str = "") -> None:
        missing = [k for k in (*KINDS, "keep", "first_positions") if f"{prefix}{k}" not in d]
        if missing:
            raise ValueError(f"metric state lacks {', '.join(prefix + k for k in missing)}")
        first = d[f"{prefix}first_positions"]
        if first.dim() != 2 or first.shape[1] != 2 or first.shape[0] > self.keep:
            raise ValueError(f"metric state {prefix}first_positions: shape {tuple(first.shape)}")
        if int(d[f"{prefix}keep"]) != self.keep:
            raise ValueError(f"metric state {prefix}keep={int(d[f'{prefix}keep'])}, "
                             f"this suite keeps {self.keep}")  # fmt: skip
        self.counts = {k: int(d[f"{prefix}{k}"]) for k in KINDS}
        self.first = first.detach().to(torch.int64).cpu().clone()
