"""The embedded default: SmolLM2-135M-Instruct and a TopK SAE on block 10's residual stream."""

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
DEFAULT_TRAIN_TOKENS = 1_000_000  # python-docs@train holds ~0.5M counted tokens: one pass
DEFAULT_EVAL_TOKENS = 100_000
DEFAULT_CONTEXT = 128
DEFAULT_BATCH_SIZE = 8


def cache_dir() -> Path:
    """`$SAEDOCTOR_CACHE`, else `~/.cache/saedoctor`."""
    env = os.environ.get("SAEDOCTOR_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "saedoctor"


def default_sae_dir() -> Path:
    name = f"L{DEFAULT_LAYER}-{DEFAULT_SITE_KIND}-topk-x{DEFAULT_EXPANSION}-k{DEFAULT_K}"
    return cache_dir() / "saes" / "SmolLM2-135M-Instruct" / name
