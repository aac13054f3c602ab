"""`diversity_top10`: how many distinct features carry a sequence's strongest activations.

Per sequence, all (position, feature) activations `> 0` are ranked by value, the `top`
largest kept and their distinct feature ids counted; the metric is the mean over sequences
(a sequence with no positive activation counts 0). A sequence must lie within one update().
Ties at the cut-off are broken deterministically (stable sorts over the token-major layout),
so the count is a pure function of the batch.
"""

from __future__ import annotations

import torch

from saedoctor.metrics._state import check_codes, export, follow_device, restore
from saedoctor.sae.codes import Codes

_STATE = ("distinct_sum", "n_sequences")


def token_top(codes: Codes, top: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's `top` largest activations `[n, t]` and their feature ids.

    A sequence's top-`top` entries are each within their own token's top-`top`, so this
    prefilter is exact and shrinks the sort to n * top entries.
    """
    vals, idx = codes.values, codes.indices
    t = min(top, vals.shape[1])
    if t < vals.shape[1]:
        vals, pos = vals.topk(t, dim=1)
        idx = pos if idx is None else idx.gather(1, pos)
    elif idx is None:
        idx = torch.arange(vals.shape[1], device=vals.device).expand_as(vals)
    return vals, idx


def _by_sequence_then_value_desc(seq: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
    """Permutation ordering entries by sequence, then value descending (ties: input order).

    Non-positive values come last within their sequence. The bit pattern of a non-negative
    float32 is monotone in its value, so one int64 key (sequence in the high bits) replaces
    two stable sorts, which were most of this metric's cost; float64 codes do not fit the key
    and take the two-sort path.
    """
    if vals.dtype != torch.float64:
        bits = vals.float().view(torch.int32).long().clamp_(min=0)  # negatives -> +0.0
        return torch.sort(seq * (1 << 31) + ((1 << 31) - 1 - bits), stable=True).indices
    order = torch.argsort(vals.clamp(min=0), descending=True, stable=True)
    return order[torch.argsort(seq[order], stable=True)]


class Diversity:
    """Streaming, mergeable mean over sequences of distinct ids among the top activations."""

    def __init__(self, top: int = 10) -> None:
        if top <= 0:
            raise ValueError(f"diversity top={top}: expected positive")
        self.top = top
        self.distinct_sum = torch.zeros((), dtype=torch.int64)
        self.n_sequences = torch.zeros((), dtype=torch.int64)

    @torch.no_grad()
    def update(self, codes: Codes,
               seq_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Fold one batch; (each sequence's id, its distinct count), for the intervals."""
        check_codes(codes, codes.d_sae)
        if seq_ids.shape != (codes.n_tokens,):
            raise ValueError(f"seq_ids shape {tuple(seq_ids.shape)}: expected ({codes.n_tokens},)")
        follow_device(self, _STATE, codes.values.device)
        uniq, local = torch.unique(seq_ids, return_inverse=True)
        vals, feats = token_top(codes, self.top)
        seq = local.unsqueeze(1).expand_as(feats).reshape(-1)
        n_seq = uniq.numel()
        per_sequence = self._distinct(seq, feats.reshape(-1), vals.reshape(-1), n_seq,
                                      codes.d_sae)  # fmt: skip
        self.distinct_sum += per_sequence.sum()
        self.n_sequences += n_seq
        return uniq, per_sequence

    def _distinct(
        self, seq: torch.Tensor, feats: torch.Tensor, vals: torch.Tensor, n_seq: int, d_sae: int
    ) -> torch.Tensor:
        """`[n_seq]` distinct feature ids among each sequence's `top` largest values."""
        order = _by_sequence_then_value_desc(seq, vals)
        seq, feats, vals = seq[order], feats[order], vals[order]
        counts = torch.bincount(seq, minlength=n_seq)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(seq.numel(), device=seq.device) - starts[seq]
        # Masking non-positive entries after the sort (they sort last) saves three gathers.
        sel = (rank < self.top) & (vals > 0)
        pairs = torch.unique(seq[sel] * d_sae + feats[sel])
        return torch.bincount(pairs // d_sae, minlength=n_seq)

    def merge(self, other: Diversity) -> Diversity:
        if other.top != self.top:
            raise ValueError(f"cannot merge Diversity(top={other.top}) into top={self.top}")
        self.distinct_sum += other.distinct_sum.to(self.distinct_sum.device)
        self.n_sequences += other.n_sequences.to(self.n_sequences.device)
        return self

    def compute(self) -> dict[str, float | int]:
        n = int(self.n_sequences)
        if n == 0:
            raise ValueError("no sequences seen: diversity is undefined")
        return {f"diversity_top{self.top}": int(self.distinct_sum) / n, "sequences_seen": n}

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        return export(self, _STATE, prefix)

    def load_state_dict(self, d: dict[str, torch.Tensor], prefix: str = "") -> None:
        restore(self, _STATE, prefix, d)
