"""Loss recovered and KL score (SPEC §2): streaming, mergeable float64 sums.

Conventions (those of SAELens `get_recons_loss`): the SAE's reconstruction replaces the site
only at counted positions; zero-ablation zeroes the whole site; CE is next-token CE at
positions whose input token is counted (the last position has no target); KL(clean‖patched)
is taken at every counted position. Scores are formed from the means.

A position whose clean or patched logits are not finite (NaN/inf: an fp16 overflow, a broken
model) is left out of every sum of that SAE, clean CE included, so the three CE values and
the two KL values always average over the same positions (`finite_positions`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from saedoctor.metrics import jackknife
from saedoctor.thresholds import INTERVAL_BLOCKS

_STATE = ("ce_clean", "ce_sae", "ce_ablated", "ce_tokens", "kl_sae", "kl_ablated", "kl_tokens")


def next_token_nll(logp: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """`[B, T-1]` −log p(token t+1) from log-probs `[B, T(-1), V]`, or `[V]` for every position."""
    targets = input_ids[:, 1:].to(logp.device)
    if logp.dim() == 1:
        return -logp[targets]
    return -logp[:, : targets.shape[1]].gather(-1, targets[..., None]).squeeze(-1)


def finite_positions(
    clean_ce: torch.Tensor, *scores: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor | None:
    """None when the clean CE `[B, T-1]` and every (CE, KL) score are finite everywhere (one
    sync); else the `[B, T]` mask of positions where all of them are. A position whose clean
    logits are not finite has a non-finite KL, so KL covers the clean side at every position."""
    ces = [clean_ce, *(ce for ce, _ in scores)]
    kls = [kl for _, kl in scores]
    every = torch.stack([torch.isfinite(t).all() for t in ces + kls]).all()
    if bool(every):
        return None
    ok = torch.stack([torch.isfinite(kl) for kl in kls]).all(0)
    ok[:, :-1] &= torch.stack([torch.isfinite(ce) for ce in ces]).all(0)
    return ok


class CleanDistribution:
    """The clean next-token distribution of one batch, kept to score patched runs against.

    Each patched run costs one log_softmax: CE and KL share it, and the clean side
    (log-probabilities, probabilities) is computed once per batch, not once per SAE."""

    def __init__(self, logits: torch.Tensor, input_ids: torch.Tensor,
                 first_sequence: int = 0) -> None:  # fmt: skip
        """`first_sequence`: the corpus index of the batch's first row (interval blocks)."""
        self.input_ids, self.first_sequence = input_ids, first_sequence
        self.logp = F.log_softmax(logits.float(), dim=-1)
        self.p = self.logp.exp()
        self.ce = next_token_nll(self.logp, input_ids)

    def score(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(CE `[B, T-1]`, KL(clean ‖ patched) `[B, T]`) for patched logits `[B, T, V]`, or
        for `[V]` logits shared by every position."""
        logq = F.log_softmax(logits.float(), dim=-1)
        return next_token_nll(logq, self.input_ids), self._kl(logq)

    def _kl(self, logq: torch.Tensor) -> torch.Tensor:
        """Σ p·(log p − log q), term by term, by the same kernels whether `logq` is `[B, T, V]`
        or one `[V]` row broadcast: equal logits give bit-equal KL on either route, and a
        near-zero KL stays exact (identity SAE). The shorter Σ p log p − p·log q is not used:
        its BLAS mat-vec sums the vocabulary in float32 in a CPU-dependent order, off by up to
        2e-4 nats per position at a 49k vocabulary."""
        if logq.shape == self.logp.shape:  # a patched run's own temporary: reuse it
            return torch.sub(self.logp, logq, out=logq).mul_(self.p).sum(-1)
        return torch.sub(self.logp, logq).mul_(self.p).sum(-1)


class Downstream:
    """Sums of CE and KL over counted positions for one SAE, in total and per sequence block
    (the sequence of corpus index s in block s mod `interval_blocks`, as in the suite's
    metrics/blocked.py), so every score gets its delete-one-block jackknife interval."""

    def __init__(self, interval_blocks: int = INTERVAL_BLOCKS) -> None:
        self.n_blocks = interval_blocks
        for name in _STATE:
            setattr(self, name, torch.zeros((), dtype=torch.float64))
        for name in _STATE:
            setattr(self, f"{name}_b", torch.zeros(interval_blocks, dtype=torch.float64))
        self._row_block: torch.Tensor | None = None

    def add_clean(self, ce: torch.Tensor, ce_mask: torch.Tensor, first_sequence: int) -> None:
        """The clean CE of a new batch whose row r is the corpus' sequence first_sequence + r
        (call first, then `add_patched` for its runs)."""
        rows = ce.shape[0]
        self._row_block = (torch.arange(rows) + first_sequence) % self.n_blocks
        self.ce_clean += ce[ce_mask].double().sum().cpu()
        self.ce_tokens += ce_mask.sum().cpu()
        self._add_rows("ce_clean", ce, ce_mask)
        self._add_rows("ce_tokens", None, ce_mask)

    def add_patched(self, which: str, ce: torch.Tensor, kl: torch.Tensor, ce_mask, kl_mask) -> None:
        setattr(
            self, f"ce_{which}", getattr(self, f"ce_{which}") + ce[ce_mask].double().sum().cpu()
        )
        setattr(
            self, f"kl_{which}", getattr(self, f"kl_{which}") + kl[kl_mask].double().sum().cpu()
        )
        self._add_rows(f"ce_{which}", ce, ce_mask)
        self._add_rows(f"kl_{which}", kl, kl_mask)
        if which == "sae":
            self.kl_tokens += kl_mask.sum().cpu()
            self._add_rows("kl_tokens", None, kl_mask)

    def _add_rows(self, name: str, values: torch.Tensor | None, mask: torch.Tensor) -> None:
        if self._row_block is None:
            raise ValueError("Downstream: add_clean must come first for each batch")
        kept = mask.double() if values is None else torch.where(mask, values.double(), 0.0)
        per_row = kept.sum(1).cpu()
        getattr(self, f"{name}_b").index_add_(0, self._row_block, per_row)

    def merge(self, other: Downstream) -> Downstream:
        for name in _STATE:
            setattr(self, name, getattr(self, name) + getattr(other, name))
            setattr(self, f"{name}_b", getattr(self, f"{name}_b") + getattr(other, f"{name}_b"))
        return self

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        names = (*_STATE, *(f"{n}_b" for n in _STATE))
        return {f"{prefix}{n}": getattr(self, n).clone() for n in names}

    def load_state_dict(self, d: dict[str, torch.Tensor], prefix: str = "") -> None:
        for n in (*_STATE, *(f"{n}_b" for n in _STATE)):
            setattr(self, n, d[f"{prefix}{n}"].double().clone())

    def compute(self) -> dict[str, Any]:
        sums = {n: getattr(self, n) for n in _STATE}
        out = _scores(sums)
        if out is None:
            return {}
        per_block = {n: getattr(self, f"{n}_b") for n in _STATE}
        left_out = _scores({n: sums[n] - per_block[n] for n in _STATE}, keep_tensors=True)
        used = per_block["ce_tokens"] > 0
        intervals = {k: jackknife.interval(out[k], left_out[k], used)
                     for k in _SCORES if left_out is not None}  # fmt: skip
        out["downstream_intervals"] = {k: v for k, v in intervals.items() if v is not None}
        out["downstream_blocks"] = {
            "tokens": per_block["ce_tokens"].long().tolist(),
            "left_out": {k: [float(v) if ok and torch.isfinite(v) else None
                             for v, ok in zip(left_out[k], used.tolist(), strict=True)]
                         for k in out["downstream_intervals"]},
        }  # fmt: skip
        out["downstream_tokens"] = int(self.ce_tokens)
        return out


_SCORES = ("loss_recovered", "ce_clean", "ce_sae", "ce_ablated", "kl_score", "kl_sae",
           "kl_ablated")  # fmt: skip


def _scores(sums: dict[str, torch.Tensor], keep_tensors: bool = False) -> dict[str, Any] | None:
    """Means and scores from sums; tensors of left-out sums give `[B]` tensors of each."""
    n_ce, n_kl = sums["ce_tokens"].double(), sums["kl_tokens"].double()
    if not keep_tensors and (float(n_ce) == 0 or float(n_kl) == 0):
        return None
    ce = {w: sums[f"ce_{w}"] / n_ce for w in ("clean", "sae", "ablated")}
    kl_sae, kl_abl = sums["kl_sae"] / n_kl, sums["kl_ablated"] / n_kl
    gap = ce["ablated"] - ce["clean"]
    values = {
        "loss_recovered": (ce["ablated"] - ce["sae"]) / torch.where(gap != 0, gap, torch.nan),
        "ce_clean": ce["clean"], "ce_sae": ce["sae"], "ce_ablated": ce["ablated"],
        "kl_score": (kl_abl - kl_sae) / torch.where(kl_abl != 0, kl_abl, torch.nan),
        "kl_sae": kl_sae, "kl_ablated": kl_abl,
    }  # fmt: skip
    if keep_tensors:
        return values
    return {k: (None if not torch.isfinite(v) else float(v)) for k, v in values.items()}
