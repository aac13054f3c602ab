"""A transcoder set spliced in whole: every transcoder of the run replaces its MLP's output in
the same forward, each reading the stream the ones below it already changed (the replacement
model a circuit-tracing tool builds), against zero-ablating all those MLPs at once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from saedoctor.activations.splice import Replacer, Splicer
from saedoctor.diagnose.units import SAEUnderTest
from saedoctor.metrics.downstream import CleanDistribution, Downstream, finite_positions

NAME = "transcoder_set"


@dataclass
class SpliceSet:
    """The transcoders of a run at distinct layers, and the loss of splicing them together.
    `suite` is None: the set has only downstream metrics (each member has its own)."""

    units: list[SAEUnderTest]
    downstream: Downstream = field(default_factory=Downstream)
    name: str = NAME
    suite: Any = None


def splice_set(units: list[SAEUnderTest]) -> SpliceSet | None:
    """The run's transcoders as one set, when there are at least two at distinct layers."""
    # A CLT's layers are spliced whole by their own group (diagnose/clt.py).
    members = [u for u in units if u.sae.is_transcoder and u.clt is None]
    outputs = [u.sae.output_site for u in members]
    if len(members) < 2 or len(set(outputs)) != len(outputs):
        return None
    return SpliceSet(sorted(members, key=lambda u: u.sae.output_site))


def _spliced(unit: SAEUnderTest, positions: torch.Tensor) -> Callable:
    """The transcoder's output at counted `positions` whose output is finite; the model's
    own MLP output elsewhere (BOS / EOS keep theirs, as in the one-layer splice)."""

    def fn(x_in: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        flat_in = x_in.reshape(-1, x_in.shape[-1])
        out = y.reshape(-1, y.shape[-1]).clone()
        y_hat, _ = unit.sae(flat_in[positions])
        ok = torch.isfinite(y_hat).all(-1)
        out[positions[ok]] = y_hat[ok].to(out.dtype)
        return out.view_as(y)

    return fn


def _zeroed(_x_in: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(y)


@torch.inference_mode()
def splice_whole(splicer: Splicer, downstream: Downstream, clean: CleanDistribution,
                 spliced: list[Replacer], ce_mask: torch.Tensor,
                 kl_mask: torch.Tensor) -> None:  # fmt: skip
    """Fold one batch's CE / KL with every replacer of `spliced` at once, and with all their
    output sites zeroed, into `downstream` (a transcoder set's or a CLT's)."""
    ablated = [Replacer(r.input_site, r.output_site, _zeroed) for r in spliced]
    sae = clean.score(splicer.patched_live(spliced))
    zero = clean.score(splicer.patched_live(ablated))
    ok = finite_positions(clean.ce, sae, zero)
    if ok is not None:
        ce_mask, kl_mask = ce_mask & ok[:, :-1], kl_mask & ok
    downstream.add_clean(clean.ce, ce_mask, clean.first_sequence)
    for which, (ce, kl) in (("sae", sae), ("ablated", zero)):
        downstream.add_patched(which, ce, kl, ce_mask, kl_mask)


def set_batch(splicer: Splicer, tset: SpliceSet, clean: CleanDistribution,
              positions: torch.Tensor, ce_mask: torch.Tensor,
              kl_mask: torch.Tensor) -> None:  # fmt: skip
    """Fold one batch's spliced-set and ablated-set CE / KL into `tset.downstream`."""
    spliced = [Replacer(u.sae.site, u.sae.output_site, _spliced(u, positions))
               for u in tset.units]  # fmt: skip
    splice_whole(splicer, tset.downstream, clean, spliced, ce_mask, kl_mask)


def set_entry(tset: SpliceSet) -> dict[str, Any]:
    """The report's `transcoder_set` section."""
    return {
        "dictionaries": [u.name for u in tset.units],
        "layers": [u.sae.output_site.layer for u in tset.units],
        "metrics": tset.downstream.compute(),
    }
