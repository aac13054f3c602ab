"""Per-block partial sums over sequence blocks: what the metrics' intervals are made from.

Every sequence goes, whole, to one of `n_blocks` blocks: sequence s (its index in the corpus
order, the same on every rank and on resume) lands in block s mod n_blocks, so merged
shards equal one pass exactly. Each block keeps the sums the suite's
metrics are ratios of; leaving one block out at a time gives the delete-one-block jackknife
(metrics/jackknife.py) from the data already streamed, with memory fixed by `n_blocks`
(`[n_blocks, d_sae]` firing counts being the largest part), never by the token count.

Within-sequence correlation is why blocks hold whole sequences: tokens of one document are
not independent, sequences nearly are.
"""

from __future__ import annotations

import torch

from saedoctor.metrics._state import export, follow_device, restore
from saedoctor.metrics.features import Entries
from saedoctor.metrics.reconstruction import chan_merge
from saedoctor.sae.codes import Codes

_STATE = ("tokens", "sse", "mean", "m2", "cos", "nonzero", "fires", "distinct",
          "sequences")  # fmt: skip


class BlockedStats:
    """Block-wise sums of tokens, residual energy, variance (mean, M2), cosine, L0, firing
    counts and top-k distinct ids per sequence."""

    def __init__(self, d_in: int, d_sae: int, n_blocks: int) -> None:
        if n_blocks < 2:
            raise ValueError(f"n_blocks={n_blocks}: a jackknife needs at least 2 blocks")
        self.d_in, self.d_sae, self.n_blocks = d_in, d_sae, n_blocks
        f64, i64 = torch.float64, torch.int64
        self.tokens = torch.zeros(n_blocks, dtype=i64)
        self.sse = torch.zeros(n_blocks, dtype=f64)
        self.mean = torch.zeros(n_blocks, d_in, dtype=f64)
        self.m2 = torch.zeros(n_blocks, dtype=f64)
        self.cos = torch.zeros(n_blocks, dtype=f64)
        self.nonzero = torch.zeros(n_blocks, dtype=i64)
        self.fires = torch.zeros(n_blocks, d_sae, dtype=i64)
        self.distinct = torch.zeros(n_blocks, dtype=i64)
        self.sequences = torch.zeros(n_blocks, dtype=i64)

    def blocks_of(self, seq_ids: torch.Tensor) -> torch.Tensor:
        """Each row's block from its sequence's corpus index."""
        return seq_ids.long() % self.n_blocks

    @torch.no_grad()
    def update_reconstruction(self, blk: torch.Tensor, x: torch.Tensor, bmean: torch.Tensor,
                              dev_sq: torch.Tensor, res_sq: torch.Tensor,
                              cos: torch.Tensor) -> None:  # fmt: skip
        """Fold one batch: `bmean` the batch mean (float64), `dev_sq` each row's ‖x − bmean‖²,
        `res_sq` its ‖x − x̂‖², `cos` its cos(x, x̂), all from Reconstruction.update."""
        follow_device(self, _STATE, x.device)
        n_b = torch.bincount(blk, minlength=self.n_blocks)
        shift = self._block_sums(blk, x, bmean)
        count = n_b.clamp(min=1).double()
        dev_b = torch.zeros(self.n_blocks, dtype=torch.float64, device=x.device)
        dev_b.index_add_(0, blk, dev_sq)
        m2_b = (dev_b - shift.pow(2).sum(1) / count).clamp(min=0)
        mean_b = bmean + shift / count[:, None]
        self.mean, self.m2 = chan_merge(self.tokens, self.mean, self.m2, n_b, mean_b, m2_b)
        self.tokens += n_b
        self.sse.index_add_(0, blk, res_sq)
        self.cos.index_add_(0, blk, cos)

    def _block_sums(self, blk: torch.Tensor, x: torch.Tensor,
                    bmean: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """`[n_blocks, d]` float64 sums of `x − bmean` over each block's rows.

        One float32 matmul with the rows' block indicator (BLAS, no float64 copy of the
        batch): the rows are centred on the float32-rounded batch mean, so the sums are of
        deviations (no cancellation), and the rounding of that mean is added back in float64.
        """
        work = torch.float64 if x.dtype == torch.float64 else torch.float32  # never half
        present, local = torch.unique(blk, return_inverse=True)
        indicator = torch.nn.functional.one_hot(local, present.numel()).T.to(work)
        centre = bmean.to(work)
        sums = (indicator @ (x.to(work) - centre)).double()
        sums += indicator.sum(1, dtype=torch.float64)[:, None] * (centre.double() - bmean)
        out = torch.zeros(self.n_blocks, self.d_in, dtype=torch.float64, device=x.device)
        return out.index_copy_(0, present, sums)

    @torch.no_grad()
    def update_features(self, blk: torch.Tensor, codes: Codes, entries: Entries) -> None:
        """Fold one batch's firing entries (every activation > 0)."""
        key = entries.per_entry(blk) * self.d_sae + entries.feats
        # scatter into the [n_blocks, d_sae] counts: no temporary of that size per batch
        self.fires.view(-1).scatter_add_(0, key, torch.ones_like(key))
        per_row = (codes.values != 0).sum(1)
        self.nonzero.index_add_(0, blk, per_row.to(torch.int64))

    @torch.no_grad()
    def update_diversity(self, blk_of_sequence: torch.Tensor, distinct: torch.Tensor) -> None:
        """Fold each sequence's distinct top-activation count into its block."""
        self.distinct.index_add_(0, blk_of_sequence, distinct.to(torch.int64))
        self.sequences += torch.bincount(blk_of_sequence, minlength=self.n_blocks)

    def merge(self, other: BlockedStats) -> BlockedStats:
        if (other.d_in, other.d_sae, other.n_blocks) != (self.d_in, self.d_sae, self.n_blocks):
            raise ValueError("cannot merge BlockedStats of other shapes")
        o = {n: getattr(other, n).to(self.tokens.device) for n in _STATE}
        self.mean, self.m2 = chan_merge(self.tokens, self.mean, self.m2, o["tokens"],
                                             o["mean"], o["m2"])  # fmt: skip
        for name in _STATE:
            if name not in ("mean", "m2"):
                setattr(self, name, getattr(self, name) + o[name])
        return self

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        return export(self, _STATE, prefix)

    def load_state_dict(self, d: dict[str, torch.Tensor], prefix: str = "") -> None:
        restore(self, _STATE, prefix, d)
