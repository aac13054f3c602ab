"""Pieces every format reader shares: safe file reading and the format-neutral `RawSAE`."""

from __future__ import annotations

import json
import pickle
import re
import warnings
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

    `tensors` already use SPEC §1 names and orientation (`W_enc [d_in, d_sae]`,
    `W_dec [d_sae, d_out]`, `b_dec [d_out]`, optional `W_skip [d_in, d_out]`).
    `transcoder`: True when the file says the dictionary reads an MLP's input and writes its
    output; None when the file cannot tell (a bare Gemma Scope .npz).
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
    d_out: int | None = None  # None: d_in
    output_site: Site | None = None  # None: the input site (an SAE)
    transcoder: bool | None = False

    @property
    def d_target(self) -> int:
        return self.d_in if self.d_out is None else self.d_out


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; any failure is an InputError naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise InputError(f"{path}: file not found") from e
    # ValueError covers bad UTF-8 and integers past Python's digit limit; RecursionError a
    # config nested thousands deep.
    except (OSError, ValueError, RecursionError) as e:
        raise InputError(f"{path}: invalid JSON config ({brief(e)})") from e
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a .safetensors file, on CPU, checked by `checked_tensors`."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise InputError(f"{path}: file not found")
    # safetensors memory-maps the file and validates the 8-byte header length against the
    # file size, the header JSON, every dtype, shape and offset (bytes = numel * itemsize,
    # offsets contiguous and covering the data exactly) before any tensor is built, so a
    # header declaring a huge tensor fails without allocating it (tests/test_hostile_files.py).
    try:
        tensors = load_file(str(path), device="cpu")
    # Its Rust error type (and KeyError for dtypes torch lacks) says why; the user needs one
    # line naming the file.
    except Exception as e:
        raise InputError(f"{path}: corrupt or truncated safetensors file ({brief(e)})") from e
    return checked_tensors(tensors, path)


def read_torch_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A plain `{name: tensor}` dict from a pickled .pt/.pth file, never running its code."""
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        with warnings.catch_warnings():
            # Noise about the pickle protocol number; a real problem raises below.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if called := _GLOBAL.search(str(e)):
            raise InputError(
                f"{path}: not a plain tensor state dict; its pickle calls {called.group(1)} on "
                "load, which saedoctor refuses (only torch.load(weights_only=True) is used)"
            ) from e
        raise InputError(f"{path}: corrupt or not a PyTorch file ({_unpickling_reason(e)})") from e
    except Exception as e:
        raise InputError(f"{path}: corrupt or unreadable PyTorch file ({brief(e)})") from e
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]  # Lightning-style checkpoints nest the weights.
    if not isinstance(obj, Mapping):
        raise InputError(f"{path}: expected a state dict of tensors, found {type(obj).__name__}")
    return checked_tensors({str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}, path)


def _unpickling_reason(error: Exception) -> str:
    """The informative part of torch's multi-paragraph weights_only message."""
    text = str(error)
    if m := re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text):
        return brief(m.group(1))
    return brief(text.splitlines()[0] if text.strip() else type(error).__name__)


def brief(error: Exception | str, limit: int = 200) -> str:
    """An exception as one short line: some libraries list every dtype or explain at length."""
    text = " ".join(str(error).split()) or type(error).__name__
    text = text.removeprefix("Error while deserializing header: ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


# torch's weights_only unpickler names the callable a pickle asked for.
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_WIDE_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def checked_tensors(tensors: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Refuse tensors a metric could silently get wrong: not dense, complex, or non-finite.

    Narrow floats (float8) are widened exactly to float32, which also gives them `isfinite`.
    """
    out = {}
    for name, t in tensors.items():
        if t.layout != torch.strided or t.is_quantized or t.device.type != "cpu":
            raise InputError(
                f"{path}: tensor {name} is a {t.layout} / quantized / {t.device.type} tensor; "
                "expected a plain dense CPU tensor"
            )
        if t.is_complex():
            raise InputError(f"{path}: tensor {name} has complex dtype {t.dtype}; expected real")
        if t.is_floating_point() and t.dtype not in _WIDE_FLOATS:
            t = _widened(t, name, path)
        if t.is_floating_point() and (bad := int((~torch.isfinite(t)).sum())):
            raise InputError(
                f"{path}: tensor {name} has {bad} non-finite values (NaN or Inf); "
                "expected finite weights"
            )
        out[name] = t
    return out


def _widened(t: torch.Tensor, name: str, path: Path) -> torch.Tensor:
    try:
        return t.to(torch.float32)
    except (RuntimeError, TypeError) as e:
        raise InputError(
            f"{path}: tensor {name} has unsupported dtype {t.dtype} ({brief(e)})"
        ) from e


def require(cfg: Mapping[str, Any], key: str, source: Path | str) -> Any:
    """`cfg[key]`, or an InputError saying the config lacks it."""
    if cfg.get(key) is None:
        raise InputError(f"{source}: config lacks required key {key!r}")
    return cfg[key]


def table(cfg: Mapping[str, Any], key: str, source: Path | str) -> dict[str, Any]:
    """`cfg[key]` when it is a JSON object, {} when absent; anything else is an InputError."""
    value = cfg.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError(
            f"{source}: config key {key!r} is a {type(value).__name__}, expected a JSON object"
        )
    return value


def as_int(value: Any, key: str, source: Path | str) -> int:
    """An int config value (JSON may give floats like 16384.0 or tensors)."""
    try:
        if isinstance(value, torch.Tensor):
            value = value.item()
        out = int(value)
    # OverflowError: JSON allows Infinity, and int(inf) overflows.
    except (TypeError, ValueError, OverflowError, RuntimeError) as e:
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
