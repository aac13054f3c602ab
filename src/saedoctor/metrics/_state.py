"""Helpers shared by the accumulators: device following, shape checks, state (de)serialisation."""

from __future__ import annotations

import torch

from saedoctor.sae.codes import Codes


def follow_device(owner: object, names: tuple[str, ...], device: torch.device) -> None:
    """Move `owner`'s state tensors to `device` so updates never copy a batch to the CPU."""
    for name in names:
        t = getattr(owner, name)
        if t.device != device:
            setattr(owner, name, t.to(device))


def check_codes(codes: Codes, d_sae: int) -> None:
    if codes.d_sae != d_sae:
        raise ValueError(f"codes have d_sae={codes.d_sae}, accumulator expects {d_sae}")
    shape = tuple(codes.values.shape)
    if len(shape) != 2 or (codes.indices is None and shape[1] != d_sae):
        raise ValueError(f"codes values have shape {shape}: expected [n, k] or [n, {d_sae}]")
    if codes.indices is not None and codes.indices.shape != codes.values.shape:
        raise ValueError("sparse codes: indices and values must have the same shape")


def export(owner: object, names: tuple[str, ...], prefix: str) -> dict[str, torch.Tensor]:
    """State tensors as detached CPU copies, ready for safetensors."""
    return {f"{prefix}{n}": getattr(owner, n).detach().cpu().clone() for n in names}


def restore(owner: object, names: tuple[str, ...], prefix: str, d: dict[str, torch.Tensor]) -> None:
    """Load state tensors after checking names, shapes and dtypes (a wrong file fails loudly)."""
    for n in names:
        key = f"{prefix}{n}"
        if key not in d:
            raise ValueError(f"metric state lacks {key!r}")
        ref, new = getattr(owner, n), d[key]
        if new.shape != ref.shape or new.dtype != ref.dtype:
            raise ValueError(
                f"metric state {key!r}: {new.dtype} {tuple(new.shape)}, "
                f"expected {ref.dtype} {tuple(ref.shape)}"
            )
        setattr(owner, n, new.detach().to(ref.device).clone())
