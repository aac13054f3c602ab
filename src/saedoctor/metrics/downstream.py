"""Loss recovered and KL score (SPEC §2): streaming, mergeable float64 sums.

Conventions (those of SAELens `get_recons_loss`): the SAE's reconstruction replaces the site
only at counted positions; zero-ablation zeroes the whole site; CE is next-token CE at
positions whose input token is counted (the last position has no target); KL(clean‖patched)
is taken at every counted position. Scores are formed from the means.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

_STATE = ("ce_clean", "ce_sae", "ce_ablated", "ce_tokens", "kl_sae", "kl_ablated", "kl_tokens")


def next_token_ce(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """`[B, T-1]` cross-entropy of predicting token t+1 at position t."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    return -logp.gather(-1, input_ids[:, 1:, None].to(logp.device)).squeeze(-1)


def kl_per_token(clean_logp: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """`[B, T]` KL(clean ‖ patched) from clean log-probs and patched logits."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return (clean_logp.exp() * (clean_logp - logp)).sum(-1)


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
