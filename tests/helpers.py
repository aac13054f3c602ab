"""Small builders shared by tests."""

from __future__ import annotations

from pathlib import Path

import torch

from saedoctor.sae.model import SAE, SAEConfig
from saedoctor.sae.site import Site


def random_sae(
    d_in: int,
    d_sae: int,
    architecture: str = "topk",
    k: int | None = 8,
    site: Site | None = None,
    seed: int = 0,
) -> SAE:
    gen = torch.Generator().manual_seed(seed)
    sae = SAE(
        SAEConfig(architecture, d_in, d_sae, k=k if architecture == "topk" else None, site=site)
    )
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=gen) / d_in**0.5)
        sae.W_dec.copy_(sae.W_enc.T / sae.W_enc.T.norm(dim=1, keepdim=True))
        sae.b_enc.copy_(torch.randn(d_sae, generator=gen) * 0.1)
    return sae


def saved_sae(directory: Path, sae: SAE) -> Path:
    from saedoctor.sae.loaders import save_sae

    save_sae(sae, directory)
    return directory
