"""Activations at several sites from one forward pass per batch, restricted to counted tokens."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from saedoctor.activations.batches import TokenBatch
from saedoctor.activations.sites import SiteReader
from saedoctor.sae.site import Site


@dataclass
class SiteBatch:
    """Counted-token activations of one batch: `acts[site] [n, d]`, `seq_ids [n]` (row in batch)."""

    acts: dict[Site, torch.Tensor]
    seq_ids: torch.Tensor
    positions: torch.Tensor  # flat index into input_ids of each counted token
    input_ids: torch.Tensor


def counted_rows(batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat positions of counted tokens, the sequence each belongs to)."""
    counted = batch.counted.reshape(-1)
    positions = counted.nonzero().squeeze(1)
    seq_ids = positions // batch.counted.shape[1]
    return positions, seq_ids


def site_batches(
    model: torch.nn.Module,
    sites: Iterable[Site],
    batches: Iterable[TokenBatch],
    device: str = "cpu",
) -> Iterator[SiteBatch]:
    """One forward pass per token batch serves every site; the pass stops at the deepest one."""
    sites = sorted(set(sites))
    with SiteReader(model, sites) as reader:
        for batch in batches:
            positions, seq_ids = counted_rows(batch)
            if positions.numel() == 0:
                continue
            input_ids = batch.input_ids.to(device)
            acts = reader.read(input_ids)
            flat = {
                site: a.reshape(-1, a.shape[-1])[positions.to(a.device)] for site, a in acts.items()
            }
            yield SiteBatch(flat, seq_ids, positions, batch.input_ids)
