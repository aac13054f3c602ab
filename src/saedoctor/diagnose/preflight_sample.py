"""The pre-flight's tokens: the corpus's first `preflight_tokens`, read at every site the
checks need from one (truncated) forward per batch, BOS / EOS positions kept and flagged."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from saedoctor.sae.site import Site


@dataclass
class Sample:
    """`acts[site] [n, d]` (CPU, float32) at every real (non-pad) position, in token order;
    `special [n]` marks the BOS / EOS positions a run leaves out unless --include-special."""

    acts: dict[Site, torch.Tensor]
    special: torch.Tensor

    @property
    def tokens(self) -> int:
        return int(self.special.numel())

    def pair(self, source: Site, target: Site, with_special: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """(input rows at `source`, target rows at `target`), finite in both; special
        positions only `with_special`."""
        keep = torch.ones_like(self.special) if with_special else ~self.special
        x, y = self.acts[source][keep], self.acts[target][keep]
        finite = torch.isfinite(x).all(1) & torch.isfinite(y).all(1)
        return x[finite], y[finite]

    def special_pair(self, source: Site, target: Site) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows of the special positions alone (finite in both)."""
        x, y = self.acts[source][self.special], self.acts[target][self.special]
        finite = torch.isfinite(x).all(1) & torch.isfinite(y).all(1)
        return x[finite], y[finite]


def read_sample(loaded: Any, opts: Any, sites: Iterable[Site]) -> Sample:
    """The corpus's first `opts.preflight_tokens` tokens at `sites` (one forward per batch)."""
    from saedoctor.activations.stream import site_batches

    sites = sorted(set(sites))
    acts: dict[Site, list[torch.Tensor]] = {s: [] for s in sites}
    special: list[torch.Tensor] = []
    for batch, flags in _batches(loaded, opts):
        for sb in site_batches(loaded.model, sites, [batch], opts.device):
            for site in sites:
                acts[site].append(sb.acts[site].detach().float().cpu())
            special.append(flags.reshape(-1)[sb.positions.cpu()])
    if not special:
        return Sample({s: torch.zeros(0, 1) for s in sites}, torch.zeros(0, dtype=torch.bool))
    return Sample({s: torch.cat(v) for s, v in acts.items()}, torch.cat(special))


def _batches(loaded: Any, opts: Any) -> Iterable[tuple[Any, torch.Tensor]]:
    """Token batches whose `counted` marks every real position, with the special flags."""
    from saedoctor.activations.batches import token_batches
    from saedoctor.activations.corpus import iter_documents

    batches = token_batches(
        loaded.tokenizer, iter_documents(opts.corpus, text_field=opts.text_field),
        context=opts.context, batch_size=opts.batch_size, max_tokens=opts.preflight_tokens,
        include_special=False, name=opts.corpus,
    )  # fmt: skip
    for batch in batches:
        real = batch.real()
        yield dataclasses.replace(batch, counted=real), real & ~batch.counted
