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

    def __init__(self, logits: torch.Tensor, input_ids: torch.Tensor) -> None:
        self.input_ids = input_ids
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
    """Sums of CE and KL over counted positions for one SAE."""

    def __init__(self) -> None:
        for name in _STATE:
            setattr(self, name, torch.zeros((), dtype=torch.float64))

    def add_clean(self, ce: torch.Tensor, ce_mask: torch.Tensor) -> None:
        self.ce_clean += ce[ce_mask].double().sum().cpu()
        self.ce_tokens += ce_mask.sum().cpu()

    def add_patched(self, which: str, ce: torch.Tensor, kl: torch.Tensor, ce_mask, kl_mask) -> None:
        setattr(
            self, f"ce_{which}", getattr(self, f"ce_{which}") + ce[ce_mask].double().sum().cpu()
        )
        setattr(
            self, f"kl_{which}", getattr(self, f"kl_{which}") + kl[kl_mask].double().sum().cpu()
        )
        if which == "sae":
            self.kl_tokens += kl_mask.sum().cpu()

    def merge(self, other: Downstream) -> Downstream:
        for name in _STATE:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        return {f"{prefix}{n}": getattr(self, n).clone() for n in _STATE}

    def load_state_dict(self, d: dict[str, torch.Tensor], prefix: str = "") -> None:
        for n in _STATE:
            setattr(self, n, d[f"{prefix}{n}"].double().clone())

    def compute(self) -> dict[str, Any]:
        n_ce, n_kl = float(self.ce_tokens), float(self.kl_tokens)
        if n_ce == 0 or n_kl == 0:
            return {}
        ce_clean, ce_sae, ce_abl = (float(getattr(self, f"ce_{w}")) / n_ce
                                    for w in ("clean", "sae", "ablated"))  # fmt: skip
        kl_sae, kl_abl = float(self.kl_sae) / n_kl, float(self.kl_ablated) / n_kl
        gap = ce_abl - ce_clean
        return {
            "loss_recovered": (ce_abl - ce_sae) / gap if gap != 0 else None,
            "ce_clean": ce_clean,
            "ce_sae": ce_sae,
            "ce_ablated": ce_abl,
            "kl_score": (kl_abl - kl_sae) / kl_abl if kl_abl != 0 else None,
            "kl_sae": kl_sae,
            "kl_ablated": kl_abl,
            "downstream_tokens": int(n_ce),
        }
