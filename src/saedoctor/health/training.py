"""The SAE's training config as prescriptions see it: `old` values under the guide's names.

Trainers spell their settings differently (`k` vs `top_k`, `lr` vs `learning_rate`); a
prescription always uses the guide's name and finds `old` under any alias, falling back to
what the SAE's own config implies (d_sae / d_in is the expansion factor). Unknown = None.
"""

from __future__ import annotations

import math
from typing import Any

from saedoctor.health.types import Prescription
from saedoctor.health.values import as_number, site_layer
from saedoctor.sae.arch import TOPK_ARCHITECTURES

# Guide name -> names a trainer config may use for it, most specific first.
ALIASES: dict[str, tuple[str, ...]] = {
    "top_k": ("top_k", "k"),
    "learning_rate": ("learning_rate", "lr"),
    "l1_penalty": ("l1_penalty", "l1_coefficient", "l1_coeff"),
    "sparsity_penalty": ("sparsity_penalty", "sparsity_coefficient", "sparsity_coeff"),
    "batch_size": ("batch_size",),
    "training_tokens": ("training_tokens", "total_training_tokens"),
}


def trainer(entry: dict[str, Any]) -> dict[str, Any]:
    metadata = (entry.get("config") or {}).get("metadata") or {}
    found = metadata.get("trainer")
    return found if isinstance(found, dict) else {}


def architecture(entry: dict[str, Any]) -> str | None:
    arch = (entry.get("config") or {}).get("architecture") or trainer(entry).get("architecture")
    return str(arch).lower() if arch else None


def is_topk(entry: dict[str, Any]) -> bool:
    return architecture(entry) in TOPK_ARCHITECTURES


def old_value(entry: dict[str, Any], field: str) -> Any:
    """The SAE's current value of a prescription field, or None when its config does not say."""
    config = entry.get("config") or {}
    metadata = config.get("metadata") or {}
    for name in ALIASES.get(field, (field,)):
        if trainer(entry).get(name) is not None:
            return trainer(entry)[name]
    implied = {
        "top_k": lambda: config.get("k"),
        "expansion_factor": lambda: _expansion(config),
        "architecture": lambda: config.get("architecture"),
        "training_tokens": lambda: metadata.get("training_tokens"),
        "dataset": lambda: metadata.get("training_corpus"),
        "layer": lambda: site_layer(entry),
    }
    return implied[field]() if field in implied else None


def _expansion(config: dict[str, Any]) -> float | None:
    d_in, d_sae = as_number(config.get("d_in")), as_number(config.get("d_sae"))
    return tidy(d_sae / d_in) if d_in and d_sae else None


def tidy(x: float) -> float | int:
    """Whole numbers as int, others rounded to 6 significant digits: configs stay readable."""
    if math.isfinite(x) and float(x).is_integer():
        return int(x)
    return float(f"{x:.6g}")


def prescribe(entry: dict[str, Any], field: str, new: Any, why: str) -> Prescription:
    return Prescription(field=field, old=old_value(entry, field), new=new, why=why)


def numeric_old(entry: dict[str, Any], field: str) -> float | None:
    """The current value as a finite number: an infinite one is no base to scale from."""
    value = as_number(old_value(entry, field))
    return value if value is not None and math.isfinite(value) else None
