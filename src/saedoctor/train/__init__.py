"""Training SAEs (docs/training.md): `train`, `train_on_activations`, `TrainConfig`.

Imports are lazy so `saedoctor diagnose` does not pay for the trainer (and vice versa).
"""

from __future__ import annotations

from typing import Any

__all__ = ["PRESETS", "TrainConfig", "TrainResult", "TrainingInterrupted", "preset_config",
           "train", "train_on_activations"]  # fmt: skip

_WHERE = {"PRESETS": "config", "TrainConfig": "config", "preset_config": "config",
          "TrainResult": "trainer", "TrainingInterrupted": "trainer", "train": "trainer",
          "train_on_activations": "trainer"}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"saedoctor.train.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'saedoctor.train' has no attribute {name!r}")
