"""Training under `torchrun`: how the ranks share the forward pass, the SAEs and the tokens.

    torchrun --nproc_per_node 2 -m saedoctor train --layer 4 --layer 10 --out runs/x
    torchrun --nproc_per_node 2 -m saedoctor train --layer 4 --layer 10 --distribute-layers ...

Both modes split the language model's forward pass: LM batch i of each pool is run by rank
i mod N, and the pool is assembled from every rank's activations in batch order (an
all-gather), so each rank holds exactly the pool a one-process run would build.

- data parallel (default): every rank trains every SAE on its share of each micro-batch
  (rows `rank::N` of the same shuffled micro-batch) and the gradients are averaged with
  an all-reduce before each Adam step, as DistributedDataParallel does. The statistics that
  steer training (firing counts behind AuxK's dead set and the diversity loss's density,
  BatchTopK's batch-wide threshold) are summed over the ranks too, so every rank takes the
  same step a one-process run takes on the whole micro-batch, up to float summation order.
- `--distribute-layers`: SAE j lives on rank j mod N only (sparsify's distribute_modules),
  trained on the whole micro-batch; memory per rank falls with the SAEs it holds.

Rank 0 holds the live monitor: every rank's window statistics (mergeable accumulators) are
folded into it at each report. Checkpoints are the one-process format, written by rank 0
(SAE states gathered from their owners), so a run resumes at any world size or none.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from saedoctor.distributed import World, init, world
from saedoctor.errors import InputError
from saedoctor.train.layout import dense_view


def _dist() -> Any:
    import torch.distributed as dist

    return dist


@dataclass
class TrainRanks:
    """This rank's role in a training run (one process: a no-op everywhere)."""

    world: World
    distribute_layers: bool = False

    @property
    def active(self) -> bool:
        return self.world.distributed

    @property
    def is_main(self) -> bool:
        return self.world.is_main

    @property
    def data_parallel(self) -> bool:
        return self.active and not self.distribute_layers

    # -- who does what -------------------------------------------------------------------
    def owner(self, index: int) -> int:
        """The rank that trains (distribute-layers) or writes (data parallel) SAE `index`."""
        return index % self.world.size if self.distribute_layers else 0

    def trains(self, index: int) -> bool:
        return not self.distribute_layers or self.owner(index) == self.world.rank

    def batch_owner(self, batch_no: int) -> int:
        """The rank that runs LM batch `batch_no` of the stream (round robin)."""
        return batch_no % self.world.size

    def share(self, rows: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a micro-batch (data parallel), else all of them."""
        return rows[self.world.rank :: self.world.size] if self.data_parallel else rows

    # -- collectives -----------------------------------------------------------------------
    def any(self, *flags: bool) -> list[bool]:
        """Each flag true on every rank if it is true on any (a stop request seen by one
        rank), in one all-reduce however many flags."""
        if not self.active:
            return list(flags)
        t = torch.tensor([int(f) for f in flags], device=self._device())
        _dist().all_reduce(t, op=_dist().ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def average_grads(self, params: list[torch.nn.Parameter]) -> None:
        if not self.data_parallel:
            return
        dist = _dist()
        for p in params:
            if p.grad is None:  # a term without gradient on this step: zeros, like DDP
                p.grad = torch.zeros_like(p)
            dist.all_reduce(dense_view(p.grad))  # in place: a view shares the gradient
            p.grad.div_(self.world.size)

    def reducer(self) -> Reducer | None:
        return Reducer(self.world.size) if self.data_parallel else None

    def gather_pool(self, entries: list[tuple[int, int]], mine: torch.Tensor) -> torch.Tensor:
        """The whole pool of one site, in batch order, from each rank's own rows.

        `entries` lists (owner rank, rows) for every LM batch of the pool, the same on all
        ranks; `mine` is this rank's rows, concatenated in batch order."""
        counts = [0] * self.world.size
        for owner, n in entries:
            counts[owner] += n
        width = mine.shape[1]
        padded = mine.new_zeros((max(counts), width))
        padded[: mine.shape[0]] = mine
        parts = [torch.empty_like(padded) for _ in range(self.world.size)]
        _dist().all_gather(parts, padded)
        cursor, pieces = [0] * self.world.size, []
        for owner, n in entries:
            pieces.append(parts[owner][cursor[owner] : cursor[owner] + n])
            cursor[owner] += n
        return torch.cat(pieces) if pieces else mine[:0]

    def gather_to_main(self, value: Any) -> list[Any] | None:
        """Every rank's `value` on rank 0 (in rank order); None elsewhere."""
        if not self.active:
            return [value]
        shares = [None] * self.world.size if self.is_main else None
        _dist().gather_object(value, shares, dst=0)
        return shares

    def from_main(self, value: Any) -> Any:
        """Rank 0's `value` on every rank."""
        if not self.active:
            return value
        box = [value if self.is_main else None]
        _dist().broadcast_object_list(box, src=0)
        return box[0]

    def _device(self) -> torch.device:
        dist = _dist()
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


class Reducer:
    """Sums across data-parallel ranks, for the statistics that steer training."""

    def __init__(self, size: int) -> None:
        self.size = size

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        _dist().all_reduce(t)
        return t

    def min(self, value: float, device: torch.device) -> float:
        t = torch.tensor([value], dtype=torch.float64, device=device)
        _dist().all_reduce(t, op=_dist().ReduceOp.MIN)
        return float(t.item())

    def kth_largest(self, values: torch.Tensor, k: int) -> torch.Tensor:
        """The k-th largest of the union of every rank's `values` (BatchTopK's threshold).

        Each rank's k largest hold every member of the global top k that it owns. Every
        rank has as many values (the micro-batch splits evenly, see `train_ranks`), so the
        local tops have one size and gather without padding."""
        local = values.topk(min(k, values.numel()), sorted=False).values.contiguous()
        parts = [torch.empty_like(local) for _ in range(self.size)]
        _dist().all_gather(parts, local)
        return torch.cat(parts).topk(k, sorted=False).values.min()


def train_ranks(device: str, distribute_layers: bool, n_saes: int,
                micro_batch_tokens: int) -> TrainRanks:  # fmt: skip
    """Join the process group (under torchrun) and check the split can work."""
    w = world()
    ranks = TrainRanks(w, distribute_layers)
    if not w.distributed:
        return ranks
    if distribute_layers and n_saes < w.size:
        raise InputError(f"--distribute-layers: {n_saes} SAE(s) for {w.size} ranks; expected "
                         "at least one SAE per rank (or train data parallel without it)")
    if not distribute_layers and micro_batch_tokens % w.size:
        raise InputError(f"batch: {micro_batch_tokens} tokens per micro-batch do not split "
                         f"evenly over {w.size} ranks; choose --batch-size/--context so they do")
    init(device)
    return ranks


def no_interrupt_mid_pool(ranks: TrainRanks, check: Callable[[], bool]) -> Callable[[], bool]:
    """A pool fill under torchrun stops only between steps, where the ranks agree on it."""
    return (lambda: False) if ranks.active else check

