"""Data-parallel runs under `torchrun`: which rank am I, which batches are mine, and how the
ranks' accumulators end up on rank 0.

    torchrun --nproc_per_node 2 -m saedoctor diagnose --model M --sae S --out run.json

Batch i of the main pass goes to rank `i % world` (deterministic: the same batches as a
one-process run, only spread out). Every accumulator is a float64 sum that is mergeable
(SPEC §1), so each rank's state is gathered onto rank 0 as a state dict and folded in with
`merge`, in rank order: the report equals a one-process run's up to the order of float64
additions (~1e-15 relative), and the token counts are exact. Rank 0 then runs the short
secondary passes (always-on explanations, --compare-corpus, --first-letter-absorption) on
its own and writes the report; the other ranks write nothing and exit 0.

One process (no torchrun, or WORLD_SIZE=1) is the plain path: nothing here does anything.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from saedoctor.errors import InputError


@dataclass(frozen=True)
class World:
    """This process's place among the ranks torchrun started."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


class WorkerDone(SystemExit):
    """Raised on ranks other than 0 once their share is handed over: they have nothing left
    to do, and a clean exit 0 is what torchrun expects of them."""

    def __init__(self, rank: int) -> None:
        super().__init__(0)
        self.rank = rank


def world() -> World:
    """Rank, world size and local rank from torchrun's environment (one process without)."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        size = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as err:
        raise InputError(f"RANK/WORLD_SIZE/LOCAL_RANK: expected integers ({err})") from err
    if size < 1 or not 0 <= rank < size:
        raise InputError(f"RANK={rank} WORLD_SIZE={size}: expected 0 <= RANK < WORLD_SIZE")
    return World(rank, size, local)


def backend_for(device: str) -> str:
    """nccl when the ranks compute on CUDA, gloo otherwise; SAEDOCTOR_DIST_BACKEND overrides."""
    chosen = os.environ.get("SAEDOCTOR_DIST_BACKEND")
    if chosen:
        return chosen
    return "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"


def init(device: str = "cpu") -> World:
    """Join the process group (once); on CUDA, bind this rank to its local GPU first so that
    `--device cuda` means that GPU for the model, the SAEs and the collectives."""
    w = world()
    if not w.distributed:
        return w
    import torch.distributed as dist

    if not dist.is_available():
        raise InputError("torch.distributed is not available in this torch build")
    if not dist.is_initialized():
        backend = backend_for(device)
        if backend == "nccl":
            torch.cuda.set_device(w.local_rank)
        dist.init_process_group(backend)
    return w


def finish() -> None:
    """Leave the process group, together: a rank that closes its connections while another
    still reads from them makes gloo abort that other rank (SIGABRT) at exit."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard_batches(batches: Iterable[Any], w: World | None = None) -> Iterator[Any]:
    """The batches of this rank: batch i goes to rank i % world size."""
    w = w or world()
    for i, batch in enumerate(batches):
        if i % w.size == w.rank:
            yield batch


# -- diagnose ---------------------------------------------------------------------------
def setup_diagnose(opts: Any) -> World:
    """Called once at the start of `diagnose`: join the group and refuse what cannot be split.

    Workers run quietly: one progress bar (rank 0's) is enough."""
    w = world()
    if not w.distributed:
        return w
    if opts.resume:
        raise InputError("--resume: a run under torchrun cannot be resumed; rerun it whole")
    if opts.activations is not None:
        raise InputError("--activations: evaluated in one process; run it without torchrun")
    init(opts.device)
    if not w.is_main:
        opts.quiet = True
    return w


def shard_main_pass(batches: Iterable[Any], state: Any) -> Iterable[Any]:
    """This rank's share of the main pass (`state` is set on the main pass only; the
    secondary passes run whole, on rank 0). A rank holds only part of the accumulators, so it
    never checkpoints on a timer, and an interrupt saves to a per-rank file that a later run
    will not mistake for a whole run's state."""
    w = world()
    if state is None or not w.distributed:
        return batches
    state.every_s = 0
    state.whole_path = getattr(state, "whole_path", state.path)
    state.path = state.whole_path.with_name(f"{state.whole_path.name}.rank{w.rank}of{w.size}")
    return shard_batches(batches, w)


def gather_main_pass(units: list[Any], totals: dict[str, int], state: Any = None) -> dict:
    """Fold every rank's accumulators and token totals into rank 0's, in rank order.

    Rank 0 returns the merged totals (its units now hold the whole pass); every other rank
    raises WorkerDone after handing its share over."""
    w = world()
    if not w.distributed:
        return totals
    import torch.distributed as dist

    done = 0 if state is None else state.batches_done
    mine = {"totals": dict(totals), "batches": done, "units": [_unit_state(u) for u in units]}
    shares: list[Any] | None = [None] * w.size if w.is_main else None
    dist.gather_object(mine, shares, dst=0)
    finish()
    if not w.is_main:
        raise WorkerDone(w.rank)
    merged = dict(totals)
    for share in shares[1:]:
        for key, value in share["totals"].items():
            merged[key] = merged.get(key, 0) + int(value)
        for unit, unit_state in zip(units, share["units"], strict=True):
            _merge_unit(unit, unit_state)
    if state is not None:  # the merged state is a valid one-process state of the whole pass
        state.batches_done = sum(s["batches"] for s in shares)
        state.path = getattr(state, "whole_path", state.path)
    return merged


def _unit_state(unit: Any) -> tuple[dict[str, torch.Tensor] | None, dict[str, torch.Tensor]]:
    suite = None if unit.suite is None else unit.suite.state_dict()  # a transcoder set: None
    return suite, unit.downstream.state_dict()


def _merge_unit(unit: Any, unit_state: tuple[dict, dict]) -> None:
    from saedoctor.metrics.downstream import Downstream

    suite_state, down_state = unit_state
    if unit.suite is not None:
        other = type(unit.suite)(**unit.suite.config)
        other.load_state_dict(suite_state)
        unit.suite.merge(other)
    down = Downstream()
    down.load_state_dict(down_state)
    unit.downstream.merge(down)
