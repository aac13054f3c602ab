"""Precomputed activations (`--activations FILE`) instead of running a model.

A `.safetensors` file holding exactly one tensor, or a `.npy` array (loaded with
`allow_pickle=False`: never run code from a file), shaped `[tokens, d_in]` or
`[sequences, context, d_in]`; or a directory written by `saedoctor cache-activations`
(safetensors shards, memory-mapped one at a time: see `cache_write.py`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from saedoctor.activations.cache_write import ShardedActivations, open_cache
from saedoctor.errors import InputError

DEFAULT_CONTEXT = 128


def load_cached_activations(path: str | Path) -> torch.Tensor | ShardedActivations:
    """Load, validate (rank, dtype, finiteness) and return a float32 tensor (float64 kept);
    a directory is an activation cache (`cache_write.py`), read lazily shard by shard."""
    path = Path(path).expanduser()
    if path.is_dir():
        return open_cache(path)
    if not path.is_file():
        raise InputError(f"activations {path}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        tensor = _load_safetensors(path)
    elif suffix == ".npy":
        tensor = _load_npy(path)
    else:
        raise InputError(
            f"activations {path}: unknown file type {suffix!r}, expected .safetensors or .npy"
        )
    return _validate(path, tensor)


def _load_safetensors(path: Path) -> torch.Tensor:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise InputError(f"activations {path}: not a readable safetensors file ({exc})") from exc
    if len(tensors) != 1:
        names = ", ".join(sorted(tensors)) or "none"
        raise InputError(
            f"activations {path}: expected exactly one tensor, found {len(tensors)} ({names})"
        )
    return next(iter(tensors.values()))


def _load_npy(path: Path) -> torch.Tensor:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:  # object arrays need pickle: refused
        raise InputError(f"activations {path}: not a readable .npy array ({exc})") from exc
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"activations {path}: dtype {array.dtype}, expected a float array")
    return torch.from_numpy(np.ascontiguousarray(array))


def _validate(path: Path, tensor: torch.Tensor) -> torch.Tensor:
    if not tensor.dtype.is_floating_point:
        raise InputError(f"activations {path}: dtype {tensor.dtype}, expected floating point")
    if tensor.dim() not in (2, 3):
        raise InputError(
            f"activations {path}: shape {list(tensor.shape)}, expected [tokens, d_in] "
            "or [sequences, context, d_in]"
        )
    if tensor.numel() == 0:
        raise InputError(f"activations {path}: shape {list(tensor.shape)} holds no activations")
    if tensor.dtype != torch.float64:
        tensor = tensor.float()  # fp16/bf16 sums lose precision; float32 is the working type
    bad = int((~torch.isfinite(tensor)).sum().item())
    if bad:
        raise InputError(f"activations {path}: {bad} non-finite values (NaN or inf)")
    return tensor


def iter_cached_batches(
    tensor: torch.Tensor | ShardedActivations, batch_tokens: int, *, context: int = DEFAULT_CONTEXT
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x [n, d_in], seq_ids [n]) in order.

    Rank 3: each row of dim 0 is a sequence. Rank 2: every `context` consecutive tokens
    form a sequence (the last may be shorter). Batches hold whole sequences only (at least
    one), so per-sequence statistics never straddle two batches.
    """
    if batch_tokens < 1 or context < 1:
        raise InputError(f"batch tokens {batch_tokens} / context {context}: expected >= 1")
    if isinstance(tensor, ShardedActivations):  # a cache knows its own sequences
        yield from tensor.batches(batch_tokens)
        return
    seq_len = tensor.shape[1] if tensor.dim() == 3 else context
    flat = tensor.reshape(-1, tensor.shape[-1])
    step = max(1, batch_tokens // seq_len) * seq_len
    for start in range(0, flat.shape[0], step):
        x = flat[start : start + step]
        positions = torch.arange(start, start + x.shape[0])
        yield x, positions // seq_len
