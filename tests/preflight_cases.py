"""Pre-flight builders shared by tests: planted SAEs that fit one site of a model, and
`preflight` report blocks that fire each pre-flight rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from saedoctor.health.preflight import (
    Gap,
    NormCheck,
    OutlierCheck,
    Preflight,
    ScaleFit,
    SiteCheck,
    SiteFit,
    SpecialCheck,
)
from saedoctor.sae.model import SAE, SAEConfig
from saedoctor.sae.site import Site


# -- planted SAEs ------------------------------------------------------------------------
def site_rows(model_dir: Path, corpus: Path, site: Site, tokens: int = 2048) -> torch.Tensor:
    """Counted-token activations `[n, d]` of a local model at `site` (float64)."""
    from saedoctor.activations.batches import token_batches
    from saedoctor.activations.corpus import iter_documents
    from saedoctor.activations.model import load_model
    from saedoctor.activations.stream import site_batches

    lm = load_model(str(model_dir))
    batches = token_batches(lm.tokenizer, iter_documents(str(corpus)), context=32,
                            batch_size=8, max_tokens=tokens)  # fmt: skip
    return torch.cat([sb.acts[site].double() for sb in site_batches(lm.model, [site], batches)])


def pca_sae(x: torch.Tensor, site: Site, rank: int = 16, expects: float = 1.0,
            metadata: dict[str, Any] | None = None) -> SAE:  # fmt: skip
    """A ReLU SAE fitted to rows `x`: decoder rows ± the top-`rank` principal directions,
    b_dec the mean, encoder the decoder's transpose (it projects onto that subspace). Built
    for activations `expects ×` these: fed `x` itself, it sees inputs 1/expects too large."""
    x = x.double() * expects
    mean = x.mean(0)
    _, _, v = torch.linalg.svd(x - mean, full_matrices=False)
    basis = torch.cat([v[:rank], -v[:rank]]).float()
    sae = SAE(SAEConfig("relu", x.shape[1], 2 * rank, site=site, metadata=metadata or {}))
    with torch.no_grad():
        sae.W_dec.copy_(basis)
        sae.W_enc.copy_(basis.T)
        sae.b_dec.copy_(mean.float())
    return sae


# -- report blocks that fire each rule ---------------------------------------------------
def site_check(declared: float = 0.9, best: float = 0.2) -> SiteCheck:
    return SiteCheck(
        SiteFit("blocks.9.hook_resid_post", 9, "resid_post", declared),
        [SiteFit("blocks.10.hook_resid_post", 10, "resid_post", best),
         SiteFit("blocks.8.hook_resid_post", 8, "resid_post", 1.2)],
        Gap(declared - best, [declared - best - 0.05, declared - best + 0.05]),
    )  # fmt: skip


def norm_check(at_one: float = 0.8, best: float = 0.2, scale: float = 0.1,
               hints: list | None = None) -> NormCheck:  # fmt: skip
    lowest, one = ScaleFit(scale, best), ScaleFit(1.0, at_one)
    scan = sorted([lowest, one], key=lambda s: s.scale)
    return NormCheck(140.0, 92.0, scan, lowest, one, Gap(at_one - best, [0.5, 0.7]), hints or [])


def special_check(fvu_with: float = 0.6, evaluated_with: bool = True) -> SpecialCheck:
    return SpecialCheck(512, 12, 0.23, fvu_with, 32.0, 32.0, 4.0, evaluated_with, False,
                        "trainer include_special=false")  # fmt: skip


def outlier_check(gamma: float = 3.0, b_dec_init: str | None = "zeros") -> OutlierCheck:
    centred = None if b_dec_init is None else b_dec_init in ("mean", "geometric_median")
    return OutlierCheck(gamma, gamma * 10.0, 10.0, b_dec_init, centred)


def with_preflight(entry: dict[str, Any], **checks: Any) -> dict[str, Any]:
    """`entry` with a `preflight` block holding `checks` (site=, norm=, special=, outliers=)."""
    entry["preflight"] = Preflight(512, list(checks), **checks).to_dict()
    return entry
