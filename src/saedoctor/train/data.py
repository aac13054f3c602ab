"""Activation pools for training: one LM forward per batch serves every site, tokens are
pooled and shuffled, and every pool can be rebuilt exactly from its start position.

A pool is filled from whole LM batches until it holds its target of counted tokens
(`shuffle_tokens`, or fewer for the last pool of a run: only what the remaining steps need);
its micro-batches are slices of one permutation seeded by (seed, pool index), the tail shorter
than a micro-batch is dropped. A checkpoint stores the pool's start (epoch, sequence) and how
many of its micro-batches were used; resuming re-reads the same sequences (the forward pass is
deterministic on CPU), rebuilds the same permutation and skips the used micro-batches, so the
resumed run sees exactly the data an uninterrupted one would, without saving activations.
A corpus shorter than the token budget is read again from the start (a new epoch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from saedoctor.distributed import World
from saedoctor.errors import InputError
from saedoctor.sae.site import Site
from saedoctor.train.ranks import TrainRanks


@dataclass(frozen=True)
class Position:
    """Where a pool starts: the epoch and the sequences already consumed in it."""

    epoch: int = 0
    sequence: int = 0


@dataclass
class Pool:
    index: int
    start: Position
    acts: dict[Site, torch.Tensor]  # [n, d] per site, the same tokens in the same order
    end: Position | None = None  # where the next pool starts

    @property
    def tokens(self) -> int:
        return next(iter(self.acts.values())).shape[0]


class Source(Protocol):
    sites: list[Site]
    d_in: int

    def pools(self, start: Position, index: int,
              target: Callable[[int], int]) -> Iterator[Pool]: ...  # fmt: skip


def micro_batches(pool: Pool, size: int, seed: int) -> list[torch.Tensor]:
    """Index tensors of the pool's micro-batches (one seeded permutation)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + pool.index)
    order = torch.randperm(pool.tokens, generator=gen)
    return [order[s : s + size] for s in range(0, pool.tokens - size + 1, size)]


class _Pooler:
    """Accumulate per-site activation chunks until a pool is full.

    Under torchrun each rank runs only its own LM batches (`skip` records the others' row
    counts) and `take` all-gathers the pool in batch order; `keep` drops the sites no SAE of
    this rank trains on (--distribute-layers)."""

    def __init__(self, sites: list[Site], target: int, ranks: TrainRanks,
                 keep: set[Site] | None = None, width: int = 0,
                 device: str = "cpu") -> None:  # fmt: skip
        self.sites, self.target = sites, target
        self.ranks, self.keep, self.width, self.device = ranks, keep, width, device
        self._reset()

    def _reset(self) -> None:
        self.chunks: dict[Site, list[torch.Tensor]] = {s: [] for s in self.sites}
        self.entries: list[tuple[int, int]] = []  # (rank that ran it, rows) per LM batch
        self.held = 0

    def add(self, acts: dict[Site, torch.Tensor]) -> None:
        for site in self.sites:
            self.chunks[site].append(acts[site].float())
        rows = next(iter(acts.values())).shape[0]
        self.entries.append((self.ranks.world.rank, rows))
        self.held += rows

    def skip(self, owner: int, rows: int) -> None:
        self.entries.append((owner, rows))
        self.held += rows

    @property
    def full(self) -> bool:
        return self.held >= self.target

    def take(self, index: int, start: Position, end: Position) -> Pool:
        acts = {}
        for site, chunks in self.chunks.items():
            mine = torch.cat(chunks) if chunks else torch.zeros(0, self.width,
                                                                device=self.device)
            if self.ranks.active:
                mine = self.ranks.gather_pool(self.entries, mine)
            if self.keep is None or site in self.keep:
                acts[site] = mine
        self._reset()
        return Pool(index, start, acts, end)


class ModelSource:
    """Activations at several sites of a language model, read in one forward per batch (a
    transcoder's mlp_in and mlp_out included: every site has the model's width)."""

    def __init__(self, loaded: Any, sites: list[Site], corpus: str, *, text_field: str,
                 context: int, batch_size: int, shuffle_tokens: int, include_special: bool,
                 device: str) -> None:  # fmt: skip
        self.loaded, self.sites, self.corpus = loaded, list(sites), corpus
        self.d_in = loaded.d_model
        self.text_field, self.context, self.batch_size = text_field, context, batch_size
        self.shuffle_tokens, self.include_special, self.device = (
            shuffle_tokens, include_special, device)  # fmt: skip
        # Checked after every LM batch: a Ctrl-C during a long pool fill stops the fill (the
        # trainer then saves its last step's state; the pool is rebuilt on resume).
        self.interrupted: Callable[[], bool] = lambda: False
        self.ranks = TrainRanks(World())  # replaced under torchrun (train/ranks.py)
        self.keep: set[Site] | None = None  # the sites this rank's SAEs train on

    def _pooler(self, target: int) -> _Pooler:
        return _Pooler(self.sites, target, self.ranks, self.keep, self.d_in, self.device)

    def _batches(self, skip: int) -> Iterator[Any]:
        from saedoctor.activations.batches import token_batches
        from saedoctor.activations.corpus import iter_documents

        return token_batches(
            self.loaded.tokenizer,
            iter_documents(self.corpus, text_field=self.text_field),
            context=self.context,
            batch_size=self.batch_size,
            max_tokens=None,
            include_special=self.include_special,
            skip_sequences=skip,
            name=self.corpus,
        )

    def pools(self, start: Position, index: int,
              target: Callable[[int], int]) -> Iterator[Pool]:  # fmt: skip
        """Pools from `start`; `target(i)` is asked for pool i's size when it starts filling."""
        from saedoctor.activations.sites import SiteReader
        from saedoctor.activations.stream import counted_rows

        epoch, seq = start.epoch, start.sequence
        pooler = self._pooler(target(index))
        pool_start = Position(epoch, seq)
        batch_no = 0  # LM batches with counted tokens: the same numbering on every rank
        with SiteReader(self.loaded.model, self.sites) as reader:
            while True:
                seen, from_start = 0, seq == 0
                for batch in self._batches(seq):
                    seq = batch.first_sequence + batch.input_ids.shape[0]
                    positions, _ = counted_rows(batch)
                    if positions.numel() == 0:
                        continue
                    owner = self.ranks.batch_owner(batch_no)
                    batch_no += 1
                    if owner == self.ranks.world.rank:
                        acts = reader.read(batch.input_ids.to(self.device))
                        pooler.add({s: a.reshape(-1, a.shape[-1])[positions.to(a.device)]
                                    for s, a in acts.items()})  # fmt: skip
                    else:
                        pooler.skip(owner, positions.numel())
                    seen += positions.numel()
                    if self.interrupted():
                        return
                    if pooler.full:
                        yield pooler.take(index, pool_start, Position(epoch, seq))
                        index += 1
                        pool_start = Position(epoch, seq)
                        pooler.target = target(index)
                if seen == 0 and from_start:
                    raise InputError(f"corpus {self.corpus!r}: no counted tokens to train on")
                if pooler.held:  # the end of the corpus: a short last pool
                    yield pooler.take(index, pool_start, Position(epoch + 1, 0))
                    index += 1
                    pooler.target = target(index)
                epoch, seq = epoch + 1, 0
                pool_start = Position(epoch, seq)


class TensorSource:
    """In-memory activations (tests, benchmarks): `{site: [N, d]}` read in order, cycled;
    the sites hold the same tokens (a transcoder's input and target rows pair up)."""

    def __init__(self, acts: dict[Site, torch.Tensor] | torch.Tensor, shuffle_tokens: int,
                 site: Site | None = None, corpus: str | None = None) -> None:  # fmt: skip
        self.corpus = corpus  # where the activations came from, for the SAEs' metadata
        if isinstance(acts, torch.Tensor):
            acts = {site or Site(0): acts}
        self.acts = {s: a.float() for s, a in acts.items()}
        self.sites = list(self.acts)
        self.d_in = next(iter(self.acts.values())).shape[1]
        self.widths = {s: a.shape[1] for s, a in self.acts.items()}  # a transcoder's may differ
        counts = {a.shape[0] for a in self.acts.values()}
        if len(counts) > 1:
            raise InputError(f"activations per site: expected one token count, got {sorted(counts)}"
                             " (every site holds the same tokens in the same order)")
        self.n = next(iter(self.acts.values())).shape[0]
        self.shuffle_tokens = shuffle_tokens

    def pools(self, start: Position, index: int,
              target: Callable[[int], int]) -> Iterator[Pool]:  # fmt: skip
        epoch, seq = start.epoch, start.sequence
        while True:
            while seq < self.n:
                end = min(self.n, seq + target(index))
                nxt = Position(epoch, end) if end < self.n else Position(epoch + 1, 0)
                yield Pool(index, Position(epoch, seq),
                           {s: a[seq:end] for s, a in self.acts.items()}, nxt)  # fmt: skip
                index, seq = index + 1, end
            epoch, seq = epoch + 1, 0
