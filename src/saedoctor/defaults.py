"""The embedded default: SmolLM2-135M-Instruct and a TopK SAE on block 10's residual stream,
shipped as package data (`data/default_sae`, built by `saedoctor train`: see train/default.py)."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL = "default"
DEFAULT_LAYER = 10
DEFAULT_SITE_KIND = "resid_post"
DEFAULT_EXPANSION = 8
DEFAULT_K = 32
DEFAULT_TRAIN_CORPUS = "python-docs@train"
DEFAULT_EVAL_CORPUS = "python-docs@test"
DEFAULT_TRAIN_TOKENS = 500_000  # python-docs@train holds ~0.5M counted tokens: one pass
DEFAULT_EVAL_TOKENS = 100_000
# Loss recovered / KL are means over tokens and settle long before per-feature densities do,
# which need every token; their extra forward passes cost most of a run on a CPU.
DEFAULT_DOWNSTREAM_TOKENS = 16_384
DEFAULT_CONTEXT = 128
DEFAULT_BATCH_SIZE = 8


def cache_dir() -> Path:
    """`$SAEDOCTOR_CACHE`, else `~/.cache/saedoctor`."""
    env = os.environ.get("SAEDOCTOR_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "saedoctor"


def default_sae_dir() -> Path:
    """The shipped default SAE's folder (native layout) inside the installed package."""
    return Path(__file__).parent / "data" / "default_sae"
