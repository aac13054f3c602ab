"""Reconstruction quality: variance explained (streaming and legacy), MSE, cosine, shrinkage.

Numerics. The SPEC denominator `Σ‖x‖² - N‖mean(x)‖²` is the total sum of squared deviations
from the mean. Evaluated literally it cancels catastrophically when the mean is large next
to the spread, which is normal for LM residual streams (a few huge "massive activation"
dimensions): with ‖mean‖²/variance ~ 1e8 even float64 keeps only ~8 digits. So we never form
it that way. Each batch gets its own two-pass moments (mean, then Σ‖x - batchmean‖²) in
float64, and batches (and shards) are combined with Chan et al.'s pairwise update

    M2 = M2_a + M2_b + ‖mean_b - mean_a‖² · n_a n_b / (n_a + n_b),

which only ever adds non-negative terms. `merge` uses the same update, so two shards merged
equal one pass up to float64 rounding (~1e-15 relative), whatever the mean's size.
Σx is `tokens · mean` when needed.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from saedoctor.metrics._state import export, follow_device, restore

_STATE = (
    "tokens", "mean", "m2", "sse", "cos_sum", "ratio_sum", "xhat_sq_sum", "dot_sum",
    "legacy_sum", "legacy_batches",
)  # fmt: skip

# SAEBench core: an input norm below this is replaced by 1 in ‖x̂‖/‖x‖ (avoids 0/0 blow-ups).
_L2_RATIO_MIN_NORM = 1e-4
# Elements per operand in one CPU block: just under torch's parallel grain size (see _row_blocks).
_CPU_BLOCK_ELEMENTS = (1 << 15) - 1


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vecdot(a, b)


def _row_blocks(x: torch.Tensor) -> list[slice]:
    """Row blocks for the float64 passes over a batch.

    On the CPU the blocks stay in cache (memory traffic on float64 temporaries of a whole
    batch made the unblocked version ~4x slower) and below torch's parallel grain size, so
    each op runs on one thread with no OpenMP barrier: parallel blocks were ~30% faster on an
    idle 2-core machine but up to ~80x slower when another process shared the cores.
    """
    n = x.shape[0]
    rows = n if x.device.type != "cpu" else max(1, _CPU_BLOCK_ELEMENTS // x.shape[1])
    return [slice(s, s + rows) for s in range(0, n, rows)]


def _row_stats(
    x: torch.Tensor, x_hat: torch.Tensor, bmean: torch.Tensor, blocks: list[slice]
) -> torch.Tensor:
    """Per token, in float64: ‖x - bmean‖², ‖x - x̂‖², ‖x‖², ‖x̂‖², ⟨x, x̂⟩ as rows of `[5, n]`.

    Differences are taken in float64 (x̂ ≈ x and x ≈ mean both cancel in float32). Fused
    norm reductions avoid a product temporary each; ⟨x, x̂⟩ = (‖x‖² + ‖x̂‖² - ‖x - x̂‖²) / 2
    only loses digits when x̂ ⟂ x, where its absolute error (~1e-16 ‖x‖²) is harmless.
    """
    out = []
    for b in blocks:
        x64, hb = x[b].double(), x_hat[b]
        out.append(torch.stack((_norm(x64 - bmean), _norm(x64 - hb), _norm(x64), _norm(hb))))
    dev_sq, res_sq, xx, hh = torch.cat(out, dim=1).square_()
    return torch.stack((dev_sq, res_sq, xx, hh, (xx + hh - res_sq) / 2))


def _norm(a: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(a, dim=1, dtype=torch.float64)


def chan_merge(
    n_a: torch.Tensor, mean_a: torch.Tensor, m2_a: torch.Tensor,
    n_b: torch.Tensor, mean_b: torch.Tensor, m2_b: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Combined (mean, M2) of two sets of vectors; counts are int64 tensors, 0-d for one
    set each, or `[B]` with means `[B, d]` for B pairs merged row by row."""
    # clamp: merging two empty states gives w = 0 (no branch, so no GPU sync).
    w = n_b.double() / (n_a + n_b).clamp(min=1).double()
    delta = mean_b - mean_a
    return mean_a + delta * w.unsqueeze(-1), m2_a + m2_b + _rowdot(delta, delta) * n_a.double() * w


class RowStats(NamedTuple):
    """One batch's per-row float64 statistics, for the per-block sums of the intervals."""

    bmean: torch.Tensor  # the batch mean [d_in]
    dev_sq: torch.Tensor  # ‖x − bmean‖²
    res_sq: torch.Tensor  # ‖x − x̂‖²
    cos: torch.Tensor  # cos(x, x̂)


class Reconstruction:
    """Streaming, mergeable reconstruction metrics over `x [n, d_in]` and `x_hat [n, d_in]`."""

    def __init__(self, d_in: int) -> None:
        if d_in <= 0:
            raise ValueError(f"d_in={d_in}: expected positive")
        self.d_in = d_in
        f64 = torch.float64
        self.tokens = torch.zeros((), dtype=torch.int64)
        self.mean = torch.zeros(d_in, dtype=f64)
        for name in _STATE[2:-1]:
            setattr(self, name, torch.zeros((), dtype=f64))
        self.legacy_batches = torch.zeros((), dtype=torch.int64)

    @torch.no_grad()
    def update(self, x: torch.Tensor, x_hat: torch.Tensor) -> RowStats | None:
        """Fold one batch; its per-row statistics (None for an empty batch)."""
        if x.dim() != 2 or x.shape[1] != self.d_in or x_hat.shape != x.shape:
            raise ValueError(
                f"x {tuple(x.shape)} / x_hat {tuple(x_hat.shape)}: expected both [n, {self.d_in}]"
            )
        n = x.shape[0]
        if n == 0:
            return None
        follow_device(self, _STATE, x.device)
        blocks = _row_blocks(x)
        bmean = torch.stack([x[b].sum(0, dtype=torch.float64) for b in blocks]).sum(0) / n
        dev_sq, res_sq, xx, hh, xh = _row_stats(x, x_hat, bmean, blocks)
        nb = torch.tensor(n, dtype=torch.int64, device=x.device)
        self.mean, self.m2 = chan_merge(self.tokens, self.mean, self.m2, nb, bmean, dev_sq.sum())
        self.tokens += n
        self.sse += res_sq.sum()
        cos = _cosine(xx, hh, xh)
        self.cos_sum += cos.sum()
        self.ratio_sum += _l2_ratio(xx, hh).sum()
        self.xhat_sq_sum += hh.sum()
        self.dot_sum += xh.sum()
        self._legacy(res_sq, dev_sq)
        return RowStats(bmean, dev_sq, res_sq, cos)

    def _legacy(self, res_sq: torch.Tensor, dev_sq: torch.Tensor) -> None:
        # A token sitting exactly on the batch mean (e.g. a 1-token batch) has no defined
        # ratio; it is skipped, and a batch with no defined token is not counted.
        ok = dev_sq > 0
        per_token = 1 - res_sq[ok] / dev_sq[ok]
        has = ok.any()
        self.legacy_sum += torch.where(has, per_token.sum() / ok.sum().clamp(min=1), 0.0)
        self.legacy_batches += has.long()

    def merge(self, other: Reconstruction) -> Reconstruction:
        if other.d_in != self.d_in:
            raise ValueError(f"cannot merge Reconstruction(d_in={other.d_in}) into {self.d_in}")
        dev = self.mean.device
        o = {n: getattr(other, n).to(dev) for n in _STATE}
        self.mean, self.m2 = chan_merge(
            self.tokens, self.mean, self.m2, o["tokens"], o["mean"], o["m2"]
        )
        for name in _STATE:
            if name not in ("mean", "m2"):
                setattr(self, name, getattr(self, name) + o[name])
        return self

    def compute(self) -> dict[str, float | None]:
        n = int(self.tokens)
        if n == 0:
            raise ValueError("no tokens seen: reconstruction metrics are undefined")
        m2, sse = float(self.m2), float(self.sse)
        ve = 1.0 - sse / m2 if m2 > 0 else None
        batches = int(self.legacy_batches)
        return {
            "variance_explained": ve,
            "fvu": None if ve is None else 1.0 - ve,
            "variance_explained_legacy": float(self.legacy_sum) / batches if batches else None,
            "mse": sse / n,
            "cossim": float(self.cos_sum) / n,
            "l2_ratio": float(self.ratio_sum) / n,
            "relative_reconstruction_bias": _ratio(float(self.xhat_sq_sum), float(self.dot_sum)),
            "error_share": _ratio(sse, self.energy()),
        }

    def energy(self) -> float:
        """`Σ‖x‖²` over all tokens, from the running mean and M2 (Σ‖x − x̄‖² + n‖x̄‖²)."""
        return float(self.m2) + int(self.tokens) * float(self.mean.pow(2).sum())

    def mean_x(self) -> torch.Tensor:
        """`mean(x)` over all tokens seen (float64, on the CPU)."""
        return self.mean.cpu()

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        return export(self, _STATE, prefix)

    def load_state_dict(self, d: dict[str, torch.Tensor], prefix: str = "") -> None:
        restore(self, _STATE, prefix, d)


def _ratio(a: float, b: float) -> float | None:
    return a / b if b != 0 else None


def _cosine(xx: torch.Tensor, hh: torch.Tensor, xh: torch.Tensor) -> torch.Tensor:
    """cos(x, x̂), defined as 0 when either vector is zero."""
    denom = (xx * hh).sqrt()
    return torch.where(denom > 0, xh / denom.clamp(min=torch.finfo(denom.dtype).tiny), 0.0)


def _l2_ratio(xx: torch.Tensor, hh: torch.Tensor) -> torch.Tensor:
    nx = xx.sqrt()
    return hh.sqrt() / torch.where(nx < _L2_RATIO_MIN_NORM, 1.0, nx)
