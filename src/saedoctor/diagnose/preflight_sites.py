"""Where else an SAE might belong: the neighbouring blocks and sites of its declared one.

An SAE at (L, kind) is tried at blocks L−1, L and L+1 at every residual-width site kind
(resid_post, resid_pre, mlp_out, attn_out); `resid_pre` of block l is the same tensor as
`resid_post` of block l−1, so each such pair is tried once, under the declared kind's name.
A per-layer transcoder is tried at its input/output pair one block either side.
"""

from __future__ import annotations

from saedoctor.sae.model import SAE
from saedoctor.sae.site import Site

NEIGHBOURS = (-1, 0, 1)  # blocks around the declared one: the off-by-one `hidden_states` index
SAE_KINDS = ("resid_post", "resid_pre", "mlp_out", "attn_out")

# (input site, target site): where the SAE reads and what its output is compared with.
Wiring = tuple[Site, Site]


def declared_wiring(sae: SAE) -> Wiring:
    return sae.site, sae.output_site


def candidate_wirings(sae: SAE, n_layers: int) -> list[Wiring]:
    """Every other wiring worth trying, declared kind first at each block; never the
    declared wiring itself."""
    site = sae.site
    layers = [site.layer + d for d in NEIGHBOURS if 0 <= site.layer + d < n_layers]
    if sae.is_transcoder:
        out = sae.output_site
        wirings = [(Site(lay, site.kind), Site(lay, out.kind)) for lay in layers]
        return [w for w in wirings if w != declared_wiring(sae)]
    kinds = (site.kind, *[k for k in SAE_KINDS if k != site.kind])
    seen = {_same_tensor(site)}
    found = []
    for layer in layers:
        for kind in kinds:
            candidate = Site(layer, kind)
            key = _same_tensor(candidate)
            if key not in seen:
                seen.add(key)
                found.append((candidate, candidate))
    return found


def _same_tensor(site: Site) -> tuple[str, int]:
    """One key per distinct tensor: resid_pre of block l is resid_post of block l − 1."""
    if site.kind == "resid_pre":
        return "resid", site.layer - 1
    if site.kind == "resid_post":
        return "resid", site.layer
    return site.kind, site.layer


def sites_of(wirings: list[Wiring]) -> set[Site]:
    return {s for pair in wirings for s in pair}
