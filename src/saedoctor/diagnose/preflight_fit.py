"""Fraction of variance unexplained on the pre-flight rows, in contiguous token blocks, so
two wirings of one SAE compare with a paired delete-one-block jackknife interval."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from saedoctor.health.preflight import Gap
from saedoctor.sae.model import SAE

# Contiguous blocks of the pre-flight's rows (token order, so whole sequences at 128 tokens
# × 512): few hundred tokens hold too few sequences for sequence blocks.
BLOCKS = 16
MIN_BLOCK_ROWS = 4


@dataclass
class BlockedFit:
    """Per block: Σ‖y − ŷ‖², Σ‖y‖², Σy and the row count (float64)."""

    err: torch.Tensor
    sq: torch.Tensor
    total: torch.Tensor
    rows: torch.Tensor

    def fvu(self) -> float:
        return float(_fvu(self.err.sum(), self.sq.sum(), self.total.sum(0), self.rows.sum()))

    def left_out(self) -> torch.Tensor:
        """FVU with each block left out in turn, `[B]`."""
        return _fvu(self.err.sum() - self.err, self.sq.sum() - self.sq,
                    self.total.sum(0) - self.total, self.rows.sum() - self.rows)  # fmt: skip


def _fvu(err: torch.Tensor, sq: torch.Tensor, total: torch.Tensor,
         rows: torch.Tensor) -> torch.Tensor:  # fmt: skip
    centred = sq - total.pow(2).sum(-1) / rows.clamp(min=1)
    return err / centred.clamp(min=1e-300)


def blocked_fit(y: torch.Tensor, y_hat: torch.Tensor,
                keep: torch.Tensor | None = None) -> BlockedFit:  # fmt: skip
    """The blocked sums of a target `y [n, d]` and its reconstruction `y_hat` over the rows
    in `keep` (default all); blocks are cut over all n rows, so fits of one sample that
    leave out different rows still pair block by block."""
    n = y.shape[0]
    blocks = max(1, min(BLOCKS, n // MIN_BLOCK_ROWS))
    index = torch.arange(n) * blocks // max(n, 1)
    if keep is not None:
        y, y_hat, index = y[keep], y_hat[keep], index[keep]
    y, y_hat = y.double().cpu(), y_hat.double().cpu()
    n = y.shape[0]
    err = torch.zeros(blocks, dtype=torch.float64).index_add_(0, index, (y - y_hat).pow(2).sum(1))
    sq = torch.zeros(blocks, dtype=torch.float64).index_add_(0, index, y.pow(2).sum(1))
    total = torch.zeros(blocks, y.shape[1], dtype=torch.float64).index_add_(0, index, y)
    rows = torch.zeros(blocks, dtype=torch.float64).index_add_(0, index, torch.ones(n).double())
    return BlockedFit(err, sq, total, rows)


def gap(worse: BlockedFit, better: BlockedFit) -> Gap:
    """FVU(worse) − FVU(better) on the same rows, with its jackknife interval."""
    from saedoctor.metrics.jackknife import interval

    value = worse.fvu() - better.fvu()
    if worse.rows.shape != better.rows.shape:  # different row sets: no paired interval
        return Gap(value, None)
    left_out = worse.left_out() - better.left_out()
    used = torch.ones_like(left_out, dtype=torch.bool)
    return Gap(value, interval(value, left_out, used))


@dataclass
class Output:
    """The SAE's output on pre-flight rows: `keep` marks the rows whose output and codes are
    finite (the others are left out, as the main pass leaves them out)."""

    y_hat: torch.Tensor
    keep: torch.Tensor
    l0: float

    def fit(self, y: torch.Tensor) -> BlockedFit:
        return blocked_fit(y, self.y_hat, self.keep)


@torch.inference_mode()
def reconstruct(sae: SAE, x: torch.Tensor, scale: float = 1.0) -> Output:
    """The SAE's output for rows `x` read at `scale · x`, divided back when the SAE's output
    is its input, and the mean L0 of its codes over the finite rows."""
    device = sae.W_enc.device
    out, codes = sae((x * scale).to(device))
    if scale != 1.0 and not sae.is_transcoder:
        out = out / scale
    out, values = out.detach().cpu(), codes.values.detach().cpu()
    keep = torch.isfinite(out).all(1) & torch.isfinite(values).all(1)
    l0 = float((values[keep] != 0).sum(1).double().mean()) if bool(keep.any()) else 0.0
    return Output(out, keep, l0)
