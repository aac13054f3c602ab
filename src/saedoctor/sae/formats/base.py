"""Pieces every format reader shares: safe file reading and the format-neutral `RawSAE`."""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from saedoctor.errors import InputError
from saedoctor.sae.site import Site


@dataclass
class RawSAE:
    """What a format reader found, before dtype, device and site overrides are applied.

    `tensors` already use SPEC §1 names and orientation (`W_enc [d_in, d_sae]`, ...).
    """

    architecture: str
    d_in: int
    d_sae: int
    tensors: dict[str, torch.Tensor]
    k: int | None = None
    apply_b_dec_to_input: bool = True
    site: Site | None = None
    model_name: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; any failure is an InputError naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise InputError(f"{path}: file not found") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: invalid JSON config ({e})") from e
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a .safetensors file, on CPU."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        return load_file(str(path), device="cpu")
    # safetensors raises its own Rust error type (and sometimes OSError/ValueError) for
    # truncated or corrupt headers; the user only needs to know the file is unusable.
    except Exception as e:
        raise InputError(f"{path}: corrupt or truncated safetensors file ({e})") from e


def read_torch_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A plain `{name: tensor}` dict from a pickled .pt/.pth file, never running its code."""
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise InputError(
            f"{path}: not a plain tensor state dict; it asks to run code on load, "
            "which saedoctor refuses (only torch.load(weights_only=True) is used)"
        ) from e
    except Exception as e:
        raise InputError(f"{path}: corrupt or unreadable PyTorch file ({e})") from e
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]  # Lightning-style checkpoints nest the weights.
    if not isinstance(obj, Mapping):
        raise InputError(f"{path}: expected a state dict of tensors, found {type(obj).__name__}")
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def require(cfg: Mapping[str, Any], key: str, source: Path | str) -> Any:
    """`cfg[key]`, or an InputError saying the config lacks it."""
    if cfg.get(key) is None:
        raise InputError(f"{source}: config lacks required key {key!r}")
    return cfg[key]


def as_int(value: Any, key: str, source: Path | str) -> int:
    """An int config value (JSON may give floats like 16384.0 or tensors)."""
    try:
        if isinstance(value, torch.Tensor):
            value = value.item()
        out = int(value)
    except (TypeError, ValueError) as e:
        raise InputError(f"{source}: config key {key!r}={value!r}: expected an integer") from e
    if out != value:
        raise InputError(f"{source}: config key {key!r}={value!r}: expected an integer")
    return out


def pick(tensors: Mapping[str, torch.Tensor], names: tuple[str, ...]) -> torch.Tensor | None:
    """The first tensor present under any of `names` (formats renamed keys over versions)."""
    for name in names:
        if name in tensors:
            return tensors[name]
    return None


def need(
    tensors: Mapping[str, torch.Tensor], names: tuple[str, ...], source: Path | str
) -> torch.Tensor:
    t = pick(tensors, names)
    if t is None:
        found = ", ".join(sorted(tensors)) or "none"
        raise InputError(
            f"{source}: missing SAE tensor {' or '.join(names)} (found: {found})"
        )
    return t


def transposed(t: torch.Tensor, name: str, source: Path | str) -> torch.Tensor:
    """`t.T` for a 2-D weight stored `[out, in]` (nn.Linear); other ranks are an error."""
    if t.ndim != 2:
        raise InputError(f"{source}: tensor {name} has shape {tuple(t.shape)}, expected 2-D")
    return t.T.contiguous()


def json_safe(value: Any) -> Any:
    """`value` with anything JSON cannot hold turned into a string (configs carry odd types)."""
    return json.loads(json.dumps(value, default=str))
