"""`saedoctor.train(...)`: train SAEs from Python under `TrainConfig`'s field names."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from saedoctor.train.config import TrainConfig, with_changes

if TYPE_CHECKING:
    from saedoctor.train.trainer import TrainResult

DEFAULT_OUT = Path("sae_runs/train")


def train_saes(
    config: TrainConfig | None = None,
    *,
    out: str | Path = DEFAULT_OUT,
    quiet: bool = False,
    keep_checkpoint: bool = False,
    distribute_layers: bool = False,
    **fields: Any,
) -> TrainResult:
    """Train one SAE per layer of `config` (default: `TrainConfig()`) into `out`, with
    `fields` (TrainConfig field names, or the guide's aliases such as `k`, `lr`) applied on
    top; values that cannot work raise `InputError` before anything runs.

        saedoctor.train(layers=[4, 10], training_tokens=200_000, out="runs/sweep")
    """
    from saedoctor.train.trainer import train

    cfg = with_changes(config or TrainConfig(), fields, "train()").validate()
    return train(cfg, out, quiet=quiet, keep_checkpoint=keep_checkpoint,
                 distribute_layers=distribute_layers)  # fmt: skip
