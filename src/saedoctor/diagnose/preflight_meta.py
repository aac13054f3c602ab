"""What an SAE's metadata says about the activations it was trained on: their scale, whether
special tokens were among them, how its decoder bias started.

Keys are looked up in saedoctor's trainer record (`metadata.trainer`), then the metadata's
top level (SAELens 6 `metadata`, pre-6 provenance keys), then the source config a converted
file kept (`metadata.source_config`).
"""

from __future__ import annotations

import math
from typing import Any

from saedoctor.health.preflight import NormHint
from saedoctor.sae.model import SAE

# b_dec initialisations that subtract the activations' centre from the input at step 0.
CENTRING_INITS = ("mean", "geometric_median")
# SAELens's dataset-wise normalisation: inputs scaled to mean norm sqrt(d_in) in training.
SAELENS_NORMALISED = ("expected_average_only_in",)


def lookup(sae: SAE, key: str) -> Any:
    """The first value of `key` in the trainer record, the metadata, the source config."""
    meta = sae.cfg.metadata or {}
    for table in (meta.get("trainer"), meta, meta.get("source_config")):
        if isinstance(table, dict) and table.get(key) is not None:
            return table[key]
    return None


def norm_hints(sae: SAE) -> list[NormHint]:
    """Input norms the metadata implies (the scan's evidence; the first may fire alone)."""
    hints = []
    d_in = sae.cfg.d_in
    scale = _positive(lookup(sae, "input_scale"))
    if scale is not None:  # saedoctor trained on s·x with E‖s·(x − μ)‖² = d_in, then folded s
        hints.append(NormHint("saedoctor trainer input_scale", "centred_rms",
                              math.sqrt(d_in) / scale, recorded=True))  # fmt: skip
    norm = lookup(sae, "normalize_activations")
    if norm in SAELENS_NORMALISED:
        hints.append(NormHint(f"SAELens normalize_activations={norm} (if its dataset-wise "
                              "scaling factor was not folded into the weights)", "mean_norm",
                              math.sqrt(d_in), recorded=False))  # fmt: skip
    average = lookup(sae, "dataset_average_activation_norm")
    average = average.get("in") if isinstance(average, dict) else average
    if (average := _positive(average)) is not None:
        hints.append(NormHint("dataset_average_activation_norm (trained on inputs rescaled "
                              "to mean norm sqrt(d_in); folded: raw inputs of this norm)",
                              "mean_norm", average, recorded=False))  # fmt: skip
    return hints


def trained_with_special(sae: SAE) -> tuple[bool | None, str | None]:
    """(whether BOS / EOS positions were among the training rows, the key that says so)."""
    include = lookup(sae, "include_special")
    if isinstance(include, bool):
        return include, f"trainer include_special={str(include).lower()}"
    exclude = lookup(sae, "exclude_special_tokens")
    if isinstance(exclude, bool | list):
        excluded = bool(exclude)
        return not excluded, f"exclude_special_tokens={_text(exclude)}"
    bos = lookup(sae, "prepend_bos")
    if isinstance(bos, bool) and lookup(sae, "sae_lens_training_version") is not None:
        # SAELens trains on every position unless told to exclude some: BOS among them.
        return bos, f"SAELens prepend_bos={str(bos).lower()}, no exclude_special_tokens"
    return None, None


def b_dec_init(sae: SAE) -> str | None:
    value = lookup(sae, "b_dec_init") or lookup(sae, "b_dec_init_method")
    return str(value) if value is not None else None


def centred_at_init(sae: SAE) -> bool | None:
    """Whether training subtracted the mean from the input at step 0 (None: unknown)."""
    if not sae.cfg.apply_b_dec_to_input:
        return False  # b_dec is added to the output only: the input is never centred
    init = b_dec_init(sae)
    return None if init is None else init in CENTRING_INITS


def _positive(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
