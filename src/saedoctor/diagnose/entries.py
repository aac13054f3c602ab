"""The report's per-SAE entries and run metadata (SPEC §5), from the measured accumulators."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import torch

from saedoctor.diagnose.cards import cards_entry
from saedoctor.diagnose.dense_latents import dense_latents_entry, with_classes
from saedoctor.diagnose.options import DiagnoseOptions
from saedoctor.diagnose.units import SAEUnderTest
from saedoctor.metrics.absorption import AbsorptionSettings
from saedoctor.sae.model import SAE
from saedoctor.thresholds import INTERVAL_LEVEL

# -- the report ----------------------------------------------------------------------------
NOT_MEASURED_WITHOUT_MODEL = "no language model: evaluated on cached activations"


NOT_MEASURED_OFF = "downstream loss not requested (--no-downstream) or undefined on this data"


def sae_entry(unit: SAEUnderTest, info: dict[str, Any], opts: DiagnoseOptions) -> dict[str, Any]:
    absorption = AbsorptionSettings(sample=opts.absorption_sample, seed=opts.seed)
    metrics = unit.suite.compute(W_dec=unit.sae.W_dec.detach(), absorption=absorption)
    density = metrics.pop("density")
    histogram = metrics.pop("density_histogram")
    mean_activation = metrics.pop("mean_activation_when_active")
    downstream = unit.downstream.compute()
    intervals = intervals_entry(metrics, downstream.pop("downstream_intervals", {}),
                                downstream.pop("downstream_blocks", None))  # fmt: skip
    metrics.update(downstream)
    card_text = info.get("card_text")
    cards = cards_entry(unit, density, mean_activation, intervals["uncertain_features"],
                        card_text, opts)  # fmt: skip
    dense = None if card_text is None else dense_latents_entry(unit, density, card_text)
    with_classes(cards, dense)
    first_letter = info.get("first_letter", {}).get(unit.name)
    if first_letter is not None and first_letter["first_letter_absorption"] is not None:
        metrics["first_letter_absorption"] = first_letter["first_letter_absorption"]
    nonfinite = unit.suite.nonfinite.compute()
    reason = NOT_MEASURED_WITHOUT_MODEL if info["model"] is None else NOT_MEASURED_OFF
    if nonfinite["downstream_positions_skipped"] and not unit.downstream.compute():
        reason = nonfinite_downstream_reason(nonfinite)
    not_measured = {k: reason for k in ("loss_recovered", "kl_score") if metrics.get(k) is None}
    if metrics["tokens_seen"] == 0:  # every row skipped as non-finite: nothing to measure
        keys = ("always_on_features", *unit.suite.measured_keys())
        not_measured |= dict.fromkeys(keys, nonfinite_rows_reason(nonfinite))
    for key in not_measured:
        metrics.pop(key, None)
    if first_letter is not None and "first_letter_absorption" not in metrics:
        not_measured["first_letter_absorption"] = first_letter.get("reason", "not measured")
    return {
        "name": unit.name,
        "path": unit.path,
        "config": config_entry(unit.sae),
        "site": site_entry(unit.sae),
        "metrics": metrics,
        "not_measured": not_measured,
        "nonfinite": nonfinite,
        "grading": None,
        "diagnoses": [],
        "prescriptions": [],
        "always_on_explanations": info.get("explanations", {}).get(unit.name, []),
        "corpus_comparison": info.get("comparisons", {}).get(unit.name),
        "first_letter_absorption": first_letter,
        "density_histogram": histogram,
        "feature_density": density,
        "feature_mean_activation": mean_activation,
        "intervals": intervals,
        "cards": cards,
        "dense_latents": dense,
    }


def intervals_entry(metrics: dict[str, Any], downstream: dict[str, list[float]],
                    downstream_blocks: dict[str, Any] | None) -> dict[str, Any]:  # fmt: skip
    """The entry's `intervals` block, taken out of the suite's `metrics`: each metric's 95 %
    interval, how they were made, each metric's leave-one-block-out values (for paired
    tests), and the features whose density could be either side of a threshold."""
    values = {**(metrics.pop("intervals", None) or {}), **downstream}
    blocks = metrics.pop("interval_blocks", None)
    return {
        "level": INTERVAL_LEVEL,
        "method": metrics.pop("interval_method", None),
        "density_method": metrics.pop("density_interval_method", None),
        "metrics": {k: v for k, v in values.items() if k in metrics or k in downstream},
        "uncertain_features": metrics.pop("uncertain_features", None),
        "blocks": blocks,
        "downstream_blocks": downstream_blocks,
    }


def nonfinite_rows_reason(nonfinite: dict[str, Any]) -> str:
    acts, outs = nonfinite["activation_rows_skipped"], nonfinite["sae_output_rows_skipped"]
    if not outs:
        return f"every activation row was non-finite (NaN/inf; fp16 overflow?): {acts} skipped"
    if not acts:
        return f"the SAE's output was non-finite on every row (fp16 overflow?): {outs} skipped"
    return (f"no finite row left: {acts} activation rows non-finite, {outs} more with a "
            "non-finite SAE output")  # fmt: skip


def nonfinite_downstream_reason(nonfinite: dict[str, Any]) -> str:
    n = nonfinite["downstream_positions_skipped"]
    return f"every position had non-finite activations or logits (NaN/inf): {n} skipped"


def config_entry(sae: SAE) -> dict[str, Any]:
    cfg = sae.cfg
    return {
        "architecture": cfg.architecture,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "d_out": cfg.d_target,
        "kind": "transcoder" if cfg.is_transcoder else "sae",
        "skip": cfg.skip,
        "k": cfg.k,
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "dtype": cfg.dtype,
        "model_name": cfg.model_name,
        "metadata": _jsonable(cfg.metadata),
    }


def site_entry(sae: SAE) -> dict[str, Any] | None:
    """Where the encoder reads; a transcoder's entry also names where its decoder writes."""
    site = sae.site
    if site is None:
        return None
    entry = {"layer": site.layer, "kind": site.kind, "hook_name": site.hook_name,
             "description": site.describe()}  # fmt: skip
    out = sae.output_site
    if out is not None and out != site:
        entry["output"] = {"layer": out.layer, "kind": out.kind, "hook_name": out.hook_name,
                           "description": out.describe()}  # fmt: skip
    return entry


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def run_metadata(opts: DiagnoseOptions, info: dict[str, Any], seconds: float) -> dict:
    import platform

    import numpy
    import safetensors
    import transformers

    from saedoctor.version import __version__

    options = asdict(opts)
    # How the run was carried out, not what it measured: a resumed report equals a fresh one.
    for key in ("quiet", "resume", "state_file", "checkpoint_minutes", "keep_state"):
        options.pop(key)
    keep = ("model", "tokens_processed", "tokens_counted", "sequences", "tokens_auto",
            "corpus_ended")
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": {
            "saedoctor": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "numpy": numpy.__version__,
            "safetensors": safetensors.__version__,
            "python": platform.python_version(),
        },
        "torch_threads": torch.get_num_threads(),
        "options": options,
        "corpus": None if opts.activations else opts.corpus,
        "compare_corpus": opts.compare_corpus,
        "activations_file": opts.activations,
        "seed": opts.seed,
        "wall_time_s": round(seconds, 3),
        **{k: info[k] for k in keep if k in info},
    }
