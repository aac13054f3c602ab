"""Training SAEs (docs/training.md): `train`, `train_on_activations`, `TrainConfig`.

Imports are lazy so `saedoctor diagnose` does not pay for the trainer (and vice versa).
The package is callable: `saedoctor.train(...)` is `train_saes` (saedoctor.callable_package).
"""

from __future__ import annotations

from typing import Any

from saedoctor.callable_package import make_callable

__all__ = ["PRESETS", "TrainConfig", "TrainResult", "TrainingInterrupted", "preset_config",
           "train", "train_on_activations", "train_saes"]  # fmt: skip

_WHERE = {"PRESETS": "config", "TrainConfig": "config", "preset_config": "config",
          "TrainResult": "trainer", "TrainingInterrupted": "trainer", "train": "trainer",
          "train_on_activations": "trainer", "train_saes": "api"}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"saedoctor.train.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'saedoctor.train' has no attribute {name!r}")


def _train_saes(*args: Any, **kwargs: Any) -> Any:
    from saedoctor.train.api import train_saes

    return train_saes(*args, **kwargs)


make_callable(__name__, _train_saes)
