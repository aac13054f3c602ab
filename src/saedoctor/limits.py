"""What `saedoctor train` accepts, declared once.

`train.config` refuses a config outside these limits; `health` keeps every prescription inside
them, so a retrain from a report's prescriptions never hits a refusal. This module imports
nothing from saedoctor: both sides sit above it.
"""

from __future__ import annotations

# SPEC §4: an expansion_factor below 1 makes the dictionary narrower than the model: never.
MIN_EXPANSION = 1
MIN_TOP_K = 1
MIN_TRAINING_TOKENS = 1
MIN_DEAD_FEATURE_TOKENS = 1  # a token count, never a fraction
MIN_PENALTY = 0  # every loss coefficient and weight: >= 0 and finite
# Learning rate: strictly between these two (an open interval).
LEARNING_RATE_ABOVE = 0.0
LEARNING_RATE_BELOW = 1.0

B_DEC_INITS: tuple[str, ...] = ("mean", "geometric_median", "zeros")
PENALTY_FIELDS: tuple[str, ...] = (
    "l1_penalty",
    "sparsity_penalty",
    "diversity_loss_weight",
    "decoder_orthogonality_weight",
    "auxk_alpha",
)


def dictionary_size(expansion_factor: float, d_in: int) -> int:
    """d_sae of an SAE with this expansion factor over a d_in-wide site."""
    return max(1, round(expansion_factor * d_in))


def top_k_fits(top_k: int, d_sae: int) -> bool:
    """`train` accepts any k up to the dictionary size."""
    return MIN_TOP_K <= top_k <= d_sae


def largest_useful_top_k(d_sae: int) -> int:
    """The largest k worth prescribing: below d_sae, since k = d_sae fires every latent on
    every token (a dense code, not a sparse one)."""
    return max(MIN_TOP_K, d_sae - 1)
