"""Atomic training checkpoints: written with `torch.save` to a temporary file beside the
target, fsynced, then renamed over it; read back with `torch.load(weights_only=True)` only,
so a checkpoint can hold tensors and plain containers but never runs code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from saedoctor.atomic import atomic_write_with
from saedoctor.errors import InputError

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT = "saedoctor.train-checkpoint/1"


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    return atomic_write_with(path, lambda f: torch.save({"format": FORMAT, **state}, f))


def load_checkpoint(path: Path) -> dict[str, Any]:
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise InputError(f"{path}: no checkpoint to resume from (expected {CHECKPOINT_FILE})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, foreign pickle with code: one line
        raise InputError(f"{path}: not a readable saedoctor checkpoint ({e})") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(f"{path}: not a saedoctor training checkpoint (expected {FORMAT})")
    return state
