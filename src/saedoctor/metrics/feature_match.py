"""Matching the decoder rows of two dictionaries: which features one shares with the other.

Pure computation on two decoder matrices `W_dec_a [n_a, d]` and `W_dec_b [n_b, d]` (two seeds
of one config, or two checkpoints of one run). Rows are unit-normalised; a zero row has no
direction and gets cosine 0 with everything.

Cosines are **signed**. A feature's code is non-negative, so its decoder row's sign is part of
the feature: the row `-d` writes the opposite of what `d` writes, and matching it to `d` would
call two opposite features one. An antipodal pair therefore scores -1, never a match.

Two methods (docs/metrics.md, "Feature matching between two dictionaries"):

- `hungarian`: the one-to-one matching of min(n_a, n_b) pairs with the largest total cosine
  (`scipy.optimize.linear_sum_assignment` on the dense cosine matrix), used when that matrix
  fits `HUNGARIAN_MAX_BYTES`. PW-MCC is then exact: the mean cosine over these pairs.
- `best_match`: beyond that budget, each row of A finds its best row of B and vice versa, in
  row chunks so that the full matrix is never held; mutual best matches are the matched
  pairs. PW-MCC is then reported as an upper bound (`pw_mcc_exact` False): the mean best
  cosine of the smaller side, which no one-to-one matching can exceed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# cos >= 0.7 counts as "the same feature": two unit vectors at 0.7 are 45 degrees apart, well
# above what unrelated directions reach in d = 576 (|cos| of random pairs ~ 1/sqrt(d) = 0.04,
# and the best of 4,608 random candidates stays near 0.2), and below where noisy copies of
# one feature from two seeds sit (0.9 and up).
MATCH_THRESHOLD = 0.7
# The dense path holds the float32 cosine matrix and the float64 copy scipy solves on.
HUNGARIAN_BYTES_PER_CELL = 4 + 8
# Up to ~9,400 x 9,400 latents: 8,192 x 8,192 took 51 s on 2 cores; beyond, best-match.
HUNGARIAN_MAX_BYTES = 1 << 30
# One chunk's float32 cosine block in best-match (a chunk of A's rows against all of B).
BEST_MATCH_CHUNK_BYTES = 256 << 20

HUNGARIAN = "hungarian"
BEST_MATCH = "best_match"
AUTO = "auto"
METHODS = (AUTO, HUNGARIAN, BEST_MATCH)


@dataclass(frozen=True)
class FeatureMatch:
    """The matched pairs of two dictionaries (ascending A id) and each row's best cosine.

    `pair_cos` are recomputed in float64 from the unit rows; `best_cos_*` come from the
    float32 products that chose the pairs."""

    method: str
    threshold: float
    n_a: int
    n_b: int
    pair_a: np.ndarray  # int64 [n_pairs]
    pair_b: np.ndarray  # int64 [n_pairs]
    pair_cos: np.ndarray  # float64 [n_pairs]
    best_cos_a: np.ndarray  # float64 [n_a]: each A row's largest cosine with a B row
    best_cos_b: np.ndarray  # float64 [n_b]

    @property
    def shared(self) -> np.ndarray:
        """Mask over the pairs: cos >= threshold (a shared feature)."""
        return self.pair_cos >= self.threshold

    @property
    def n_shared(self) -> int:
        return int(self.shared.sum())

    @property
    def shared_fraction_a(self) -> float:
        """Fraction of A's features with a counterpart in B: n_shared / n_a."""
        return self.n_shared / self.n_a

    @property
    def shared_fraction_b(self) -> float:
        """Fraction of B's features with a counterpart in A: n_shared / n_b."""
        return self.n_shared / self.n_b

    @property
    def shared_fraction(self) -> float:
        """Symmetric: 2 n_shared / (n_a + n_b); equals both one-sided ones when n_a = n_b."""
        return 2 * self.n_shared / (self.n_a + self.n_b)

    @property
    def pw_mcc_exact(self) -> bool:
        return self.method == HUNGARIAN

    @property
    def pw_mcc(self) -> float:
        """Mean cosine over the optimal one-to-one matching (exact under `hungarian`); under
        `best_match` the mean best cosine of the smaller side (of both when equal, the lower
        one), an upper bound of the exact value."""
        if self.pw_mcc_exact:
            return float(self.pair_cos.mean()) if len(self.pair_cos) else 0.0
        means = [float(b.mean()) for b, n in ((self.best_cos_a, self.n_a),
                                               (self.best_cos_b, self.n_b))
                 if n == min(self.n_a, self.n_b)]  # fmt: skip
        return min(means)

    @property
    def a_only(self) -> np.ndarray:
        """A's features without a counterpart at cos >= threshold (died, if B is later)."""
        return _without(self.n_a, self.pair_a[self.shared])

    @property
    def b_only(self) -> np.ndarray:
        """B's features without a counterpart at cos >= threshold (born, if B is later)."""
        return _without(self.n_b, self.pair_b[self.shared])

    def partners_of_a(self) -> dict[int, tuple[int, float]]:
        """A id -> (B id, cos) for every shared pair."""
        keep = self.shared
        return {int(a): (int(b), float(c)) for a, b, c in
                zip(self.pair_a[keep], self.pair_b[keep], self.pair_cos[keep], strict=True)}

    def partners_of_b(self) -> dict[int, tuple[int, float]]:
        """B id -> (A id, cos) for every shared pair."""
        return {b: (a, c) for a, (b, c) in self.partners_of_a().items()}


def match_features(W_dec_a: torch.Tensor, W_dec_b: torch.Tensor, *,
                   threshold: float = MATCH_THRESHOLD,
                   method: str = AUTO) -> FeatureMatch:  # fmt: skip
    """Match the rows of two decoder matrices (module doc). `method`: auto (Hungarian when the
    cosine matrix fits `HUNGARIAN_MAX_BYTES`, else best-match), hungarian or best_match."""
    check_inputs(W_dec_a, W_dec_b, threshold, method)
    a, b = unit_rows(W_dec_a), unit_rows(W_dec_b)
    chosen = choose_method(len(a), len(b), method)
    if chosen == HUNGARIAN:
        pair_a, pair_b, best_a, best_b = _hungarian(a, b)
    else:
        pair_a, pair_b, best_a, best_b = _best_match(a, b)
    cos = (a[pair_a].double() * b[pair_b].double()).sum(dim=1)
    return FeatureMatch(chosen, float(threshold), len(a), len(b), pair_a.numpy(),
                        pair_b.numpy(), cos.numpy(), best_a.double().numpy(),
                        best_b.double().numpy())  # fmt: skip


def check_inputs(W_dec_a: torch.Tensor, W_dec_b: torch.Tensor, threshold: float,
                 method: str) -> None:  # fmt: skip
    if W_dec_a.ndim != 2 or W_dec_b.ndim != 2 or W_dec_a.shape[1] != W_dec_b.shape[1]:
        raise ValueError(f"decoders {tuple(W_dec_a.shape)} and {tuple(W_dec_b.shape)}: "
                         "expected [n_a, d] and [n_b, d]")  # fmt: skip
    if not len(W_dec_a) or not len(W_dec_b):
        raise ValueError("decoders: expected at least one row each")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold {threshold}: expected 0 < threshold <= 1")
    if method not in METHODS:
        raise ValueError(f"method {method!r}: expected one of {', '.join(METHODS)}")


def hungarian_bytes(n_a: int, n_b: int) -> int:
    """Memory the dense (Hungarian) path needs for an n_a x n_b cosine matrix."""
    return n_a * n_b * HUNGARIAN_BYTES_PER_CELL


def hungarian_fits(n_a: int, n_b: int) -> bool:
    """Whether the dense cosine matrix fits `HUNGARIAN_MAX_BYTES`."""
    return hungarian_bytes(n_a, n_b) <= HUNGARIAN_MAX_BYTES


def choose_method(n_a: int, n_b: int, method: str = AUTO) -> str:
    if method != AUTO:
        return method
    return HUNGARIAN if hungarian_fits(n_a, n_b) else BEST_MATCH


def unit_rows(W_dec: torch.Tensor) -> torch.Tensor:
    """float32 rows of unit norm (normalised in float64); zero rows stay zero."""
    rows = W_dec.detach().to("cpu", torch.float64)
    norms = rows.norm(dim=1, keepdim=True)
    return torch.where(norms > 0, rows / norms.clamp_min(1e-300), 0.0).float()


def _hungarian(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
    from scipy.optimize import linear_sum_assignment

    cos = a @ b.T
    best_a, best_b = cos.max(dim=1).values, cos.max(dim=0).values
    rows, cols = linear_sum_assignment(cos.numpy(), maximize=True)  # rows ascending
    return torch.from_numpy(rows).long(), torch.from_numpy(cols).long(), best_a, best_b


def _best_match(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each row's best partner on the other side, one chunk of A's rows at a time; the pairs
    are the mutual best matches."""
    n_a, n_b = len(a), len(b)
    best_a, arg_a = torch.empty(n_a), torch.empty(n_a, dtype=torch.long)
    best_b, arg_b = torch.full((n_b,), -torch.inf), torch.zeros(n_b, dtype=torch.long)
    step = max(1, BEST_MATCH_CHUNK_BYTES // (4 * n_b))
    for start in range(0, n_a, step):
        block = a[start : start + step] @ b.T
        best_a[start : start + step], arg_a[start : start + step] = block.max(dim=1)
        column, where = block.max(dim=0)
        better = column > best_b  # strict: a tie keeps the lower A id
        best_b[better], arg_b[better] = column[better], where[better] + start
    ids = torch.arange(n_a)
    mutual = arg_b[arg_a] == ids
    return ids[mutual], arg_a[mutual], best_a, best_b


def _without(n: int, ids: np.ndarray) -> np.ndarray:
    keep = np.ones(n, dtype=bool)
    keep[ids] = False
    return np.flatnonzero(keep)
