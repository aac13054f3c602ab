"""Activation functions of a sparse dictionary, each declared once and used by both
inference (`sae.model.Dictionary.encode`) and training (`train.sae_trainer`).

A new architecture is one file defining an `Architecture` subclass plus one line in
`_MODULES`; an unknown name is an `InputError`, never a fallback.
"""

from __future__ import annotations

from importlib import import_module

from saedoctor.errors import InputError
from saedoctor.sae.arch.base import Architecture

_MODULES = ("topk", "batchtopk", "relu", "jumprelu", "gated")
REGISTRY: dict[str, Architecture] = {}


def register(arch: Architecture) -> Architecture:
    REGISTRY[arch.name] = arch
    return arch


def get_architecture(name: str) -> Architecture:
    """The registered architecture called `name`; InputError naming the known ones."""
    arch = REGISTRY.get(name)
    if arch is None:
        raise InputError(f"architecture {name!r}: expected one of {', '.join(REGISTRY)}")
    return arch


for _module in _MODULES:
    register(import_module(f"saedoctor.sae.arch.{_module}").ARCHITECTURE)

ARCHITECTURES: tuple[str, ...] = tuple(REGISTRY)
TRAINABLE_ARCHITECTURES: tuple[str, ...] = tuple(n for n, a in REGISTRY.items() if a.trainable)
TOPK_ARCHITECTURES: tuple[str, ...] = tuple(n for n, a in REGISTRY.items() if a.needs_k)

__all__ = ["ARCHITECTURES", "TOPK_ARCHITECTURES", "TRAINABLE_ARCHITECTURES", "Architecture",
           "get_architecture", "register"]  # fmt: skip
