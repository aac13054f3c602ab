"""The training configuration: one dataclass under the guide's parameter names.

`TrainConfig` holds the run (model, layers, dataset, token budget, batching) and the SAE
hyper-parameters; `layer_overrides` changes SAE hyper-parameters for some layers only
(`{22: {"expansion_factor": 16}}`, or a range `{"16-28": {...}}`). Values that cannot work
are refused with an `InputError` that says why, never silently used: an expansion factor
below 1 (the guide recommends 0.25, which makes the dictionary narrower than the model), a
ReLU SAE without any sparsity penalty, a dead-feature threshold given as a fraction, ...

Loss units (see docs/training.md): the trainer rescales activations so each dimension has
unit variance on average (`x' = s·x`, `s² = d_in / E‖x - mean‖²`; folded back on export), and
every term is SAELens's divided by `d_in`, so the reconstruction term is a fraction of
variance unexplained and `l1_penalty` / `sparsity_penalty` mean what SAELens's
`l1_coefficient` / `l0_coefficient` mean.

`kind="transcoder"` trains per-layer transcoders instead: the encoder reads a block's
`mlp_in`, the decoder reconstructs the same block's `mlp_out` (optionally plus a linear
skip, `skip=True`); input and target are rescaled separately and terms are divided by d_out.
`kind="clt"` trains one cross-layer transcoder over blocks 0..n-1 (`train/clt_trainer.py`).
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from saedoctor import defaults
from saedoctor.errors import InputError
from saedoctor.limits import (
    B_DEC_INITS,
    LEARNING_RATE_ABOVE,
    LEARNING_RATE_BELOW,
    MIN_DEAD_FEATURE_TOKENS,
    MIN_EXPANSION,
    MIN_PENALTY,
    MIN_TOP_K,
    MIN_TRAINING_TOKENS,
    PENALTY_FIELDS,
    dictionary_size,
    top_k_fits,
)
from saedoctor.options import option
from saedoctor.sae.arch import TOPK_ARCHITECTURES, TRAINABLE_ARCHITECTURES
from saedoctor.sae.site import SITE_KINDS
from saedoctor.thresholds import ALWAYS_ON_DENSITY

ARCHITECTURES = TRAINABLE_ARCHITECTURES
KINDS = ("sae", "transcoder", "clt")
# A transcoder's (input, output) site kinds, at the same block (a CLT's, at every block).
TRANSCODER_SITES = ("mlp_in", "mlp_out")
# circuit-tracer stores ReLU / JumpReLU CLTs; BatchTopK exports as JumpReLU with its global
# threshold. TopK has no on-disk form there, gated no CLT form anywhere.
CLT_TRAINABLE = ("relu", "jumprelu", "batchtopk")
PRECISIONS = ("fp32", "bf16")
MODEL_DTYPES = ("float32", "bfloat16", "float16")
LOGGERS = ("wandb", "tensorboard")
DEFAULT_DEAD_TOKENS = 100_000
# Guide-name aliases accepted on input (config files, trainer metadata of other tools).
ALIASES = {"k": "top_k", "lr": "learning_rate", "l1_coefficient": "l1_penalty",
           "l0_coefficient": "sparsity_penalty", "corpus": "dataset",
           "total_training_tokens": "training_tokens"}  # fmt: skip


@dataclass
class TrainConfig:
    """Everything `saedoctor train` takes. SAE fields may differ per layer (`layer_overrides`)."""

    # -- the run ------------------------------------------------------------------------
    model: str = option(defaults.DEFAULT_MODEL, help="HF id or local dir; default: embedded")
    layers: list[int] = option(
        [defaults.DEFAULT_LAYER], flag="--layer", help="block index (repeatable: one SAE each)")
    site: str = option(defaults.DEFAULT_SITE_KIND, help=" | ".join(SITE_KINDS))
    kind: str = option(
        "sae", help="sae | transcoder (reads mlp_in, reconstructs mlp_out of the same block) | "
        "clt (a cross-layer transcoder over blocks 0..n-1)")
    dataset: str = option(
        defaults.DEFAULT_TRAIN_CORPUS, flag=("--dataset", "--corpus"), help="training corpus")
    text_field: str = option("text", cli=False, help="text column of jsonl/parquet/HF data")
    training_tokens: int = option(
        500_000, flag="--tokens", help="activation tokens the SAEs train on (counted tokens)")
    context: int = option(defaults.DEFAULT_CONTEXT, help="sequence length")
    batch_size: int = option(
        8, help="sequences per LM forward and per SAE micro-batch (x context tokens)")
    gradient_accumulation: int = option(1, help="micro-batches per optimizer step")
    shuffle_tokens: int = option(
        32_768, cli=False, help="tokens pooled and shuffled before slicing micro-batches")
    include_special: bool = option(False, cli=False, help="train on BOS/EOS/pad positions too")
    device: str = option("cpu", help="cpu, cuda, cuda:1, mps")
    model_dtype: str = option("float32", cli=False, help=" | ".join(MODEL_DTYPES))
    precision: str = option("fp32", help="SAE matmuls: fp32, or bf16 autocast")
    seed: int = option(0, help="random seed (initialisation, shuffles)")
    # -- the SAE (per-layer overridable) ------------------------------------------------
    architecture: str = option("topk", help=" | ".join(ARCHITECTURES))
    expansion_factor: float = option(8, help="d_sae / d_model (>= 1)")
    top_k: int = option(32, help="active latents per token (topk, batchtopk)")
    l1_penalty: float = option(0.0, help="L1 sparsity penalty (SAELens l1_coefficient)")
    sparsity_penalty: float = option(0.0, help="L0 penalty (SAELens l0_coefficient)")
    diversity_loss_weight: float = option(
        0.0, help="weight of the loss on latents whose running density passes its target "
        "(against always-on features)")
    diversity_target_density: float = option(
        0.5, cli=False, help="running density above which the diversity loss acts")
    decoder_orthogonality_weight: float = option(
        0.0, help="decoder-orthogonality penalty (against absorption)")
    auxk_alpha: float = option(1 / 32, help="weight of the AuxK loss on dead latents")
    dead_feature_threshold: int = option(
        DEFAULT_DEAD_TOKENS, help="tokens without firing after which AuxK treats a latent dead")
    b_dec_init: str = option("mean", help=" | ".join(B_DEC_INITS))
    skip: bool = option(False, help="transcoder: add a trained linear skip x @ W_skip")
    learning_rate: float | None = option(
        None, help="Adam learning rate", shown_default="2e-4 / sqrt(d_sae / 2**14)")
    lr_warmup_steps: int = option(50, cli=False, help="linear warm-up steps")
    lr_decay_fraction: float = option(
        0.2, cli=False, help="linear decay to 0 over this last fraction of the steps")
    jumprelu_bandwidth: float = option(0.05, cli=False, help="JumpReLU's straight-through width")
    jumprelu_init_threshold: float = option(
        0.01, cli=False, help="JumpReLU's initial threshold")
    # -- monitoring, checkpoints ----------------------------------------------------------
    monitor_every: int | None = option(
        None, help="steps between health reports", shown_default="a 40k-token window")
    always_on_threshold: float = option(
        ALWAYS_ON_DENSITY, cli=False,
        help="density above which the monitor calls a latent always-on")
    checkpoint_every: int = option(500, help="steps; 0: on Ctrl-C / SIGTERM only")
    checkpoint_minutes: float = option(
        10.0, cli=False, help="also checkpoint after this much wall time; 0: off")
    log_to: list[str] = option(
        [], flag="--log-to", help=" | ".join(LOGGERS) + " (repeatable)")
    wandb_project: str = option("saedoctor", cli=False, help="W&B project of --log-to wandb")
    layer_overrides: dict[str, dict[str, Any]] = option(
        {}, cli=False, help='SAE fields for some layers only: {"22": {...}, "16-28": {...}}')
    preset: str | None = option(
        None, cli=False, help="the preset the config started from (`--preset` sets it)")

    # ---------------------------------------------------------------------------------
    @property
    def micro_batch_tokens(self) -> int:
        return self.batch_size * self.context

    @property
    def tokens_per_step(self) -> int:
        return self.micro_batch_tokens * self.gradient_accumulation

    @property
    def total_steps(self) -> int:
        return max(1, self.training_tokens // self.tokens_per_step)

    def validate(self) -> TrainConfig:
        """Raise InputError for anything that cannot work; returns self."""
        _check_run(self)
        for layer in self.layers:
            _check_sae(self.for_layer(layer), f"layer {layer}: " if self.layer_overrides else "")
        return self

    def for_layer(self, layer: int) -> TrainConfig:
        """This config with the overrides that apply to `layer` (later keys win)."""
        cfg = replace(self, layers=[layer], layer_overrides={})
        for key, changes in self.layer_overrides.items():
            if layer in _layer_range(key):
                cfg = _with(cfg, changes, f"layer_overrides[{key!r}]", SAE_FIELDS)
        return cfg

    def sae_fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in SAE_FIELDS}

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from a dict (a config file, a trainer metadata block); unknown keys refused."""
        return _with(cls(), data, source, tuple(f.name for f in fields(cls))).validate()


RUN_FIELDS = (
    "model", "layers", "site", "kind", "dataset", "text_field", "training_tokens", "context",
    "batch_size", "gradient_accumulation", "shuffle_tokens", "include_special", "device",
    "model_dtype", "precision", "seed", "monitor_every", "always_on_threshold",
    "checkpoint_every", "checkpoint_minutes", "log_to", "wandb_project", "layer_overrides",
    "preset",
)  # fmt: skip
SAE_FIELDS = tuple(f.name for f in fields(TrainConfig) if f.name not in RUN_FIELDS)


# -- presets --------------------------------------------------------------------------------
# Measured on the embedded default (docs/training.md, benchmarks/train_presets.py and
# benchmarks/prescription_ab.py), not copied from the guide:
# - general: TopK x8 k=32 with AuxK and b_dec at the mean. python-docs, block 22, 120k tokens:
#   0 always-on, 0.1 % dead, variance explained 0.62 (b_dec at zero: 16 always-on, 67 % dead,
#   0.48). The default SAE (block 10, 0.5M tokens) with this config: 0.78.
# - domain: a narrow corpus has fewer directions to cover: x4 k=64. python-code, block 10,
#   120k tokens: variance explained 0.633 vs 0.544 for general (x8 k=64: 0.578, x4 k=32: 0.577).
# The diversity loss is off in both: with b_dec at the mean no latent reached its density
# target in any run, so it changed nothing (bit-identical weights).
PRESETS: dict[str, dict[str, Any]] = {
    "general": {"architecture": "topk", "expansion_factor": 8, "top_k": 32,
                "auxk_alpha": 1 / 32, "b_dec_init": "mean", "diversity_loss_weight": 0.0},
    "domain": {"architecture": "topk", "expansion_factor": 4, "top_k": 64,
               "auxk_alpha": 1 / 32, "b_dec_init": "mean", "diversity_loss_weight": 0.0},
}  # fmt: skip


def preset_config(name: str, **changes: Any) -> TrainConfig:
    if name not in PRESETS:
        raise InputError(f"--preset {name!r}: expected one of {', '.join(PRESETS)}")
    cfg = _with(TrainConfig(preset=name), PRESETS[name], f"preset {name}", SAE_FIELDS + RUN_FIELDS)
    return _with(cfg, changes, "options", SAE_FIELDS + RUN_FIELDS)


def with_changes(cfg: TrainConfig, changes: dict[str, Any], source: str) -> TrainConfig:
    """`cfg` with `changes` applied (guide names or aliases); unknown names refused."""
    return _with(cfg, changes, source, SAE_FIELDS + RUN_FIELDS)


def _with(cfg: TrainConfig, changes: dict[str, Any], source: str, allowed: tuple) -> TrainConfig:
    updates: dict[str, Any] = {}
    for raw_key, value in changes.items():
        key = ALIASES.get(raw_key, raw_key)
        if key == "layer":
            key, value = "layers", [value]
        if key not in allowed:
            hint = difflib.get_close_matches(key, allowed, n=1)
            extra = f" (did you mean {hint[0]}?)" if hint else ""
            where = "per-layer " if allowed is SAE_FIELDS else ""
            raise InputError(f"{source}: unknown {where}training field {raw_key!r}{extra}")
        updates[key] = _coerce(key, value, source)
    if updates.get("kind") in ("transcoder", "clt") and "site" not in updates:
        # The site default is an SAE's; a transcoder's input is fixed, so `--kind transcoder`
        # alone means mlp_in. A site given with it is checked by `validate`.
        if cfg.site == defaults.DEFAULT_SITE_KIND:
            updates["site"] = TRANSCODER_SITES[0]
    return replace(cfg, **updates)


_INT_FIELDS = ("training_tokens", "context", "batch_size", "gradient_accumulation",
               "shuffle_tokens", "seed", "top_k", "lr_warmup_steps", "checkpoint_every")


def _coerce(key: str, value: Any, source: str) -> Any:
    if key in _INT_FIELDS and isinstance(value, float):
        if not value.is_integer():
            raise InputError(f"{source}: {key}={value}: expected a whole number")
        return int(value)
    if key == "layers":
        values = value if isinstance(value, list | tuple) else [value]
        try:
            return [int(v) for v in values]
        except (TypeError, ValueError) as e:
            raise InputError(f"{source}: layers={value!r}: expected block indices") from e
    if key == "layer_overrides" and isinstance(value, dict):
        return {str(k): dict(v) for k, v in value.items()}
    if key == "dead_feature_threshold" and isinstance(value, float) and value.is_integer():
        return int(value) if value >= 1 else value
    return value


def _layer_range(key: str) -> range:
    text = str(key).strip()
    if m := re.fullmatch(r"(\d+)\s*-\s*(\d+)", text):
        return range(int(m.group(1)), int(m.group(2)) + 1)
    if text.isdigit():
        return range(int(text), int(text) + 1)
    raise InputError(f"layer_overrides key {key!r}: expected a layer like 22 or a range like 16-28")


# -- validation -----------------------------------------------------------------------------
def _positive_int(cfg: TrainConfig, name: str, minimum: int = 1) -> None:
    value = getattr(cfg, name)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InputError(f"{name}={value!r}: expected a whole number >= {minimum}")


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InputError(f"{name}={value!r}: expected one of {', '.join(choices)}")


def _check_run(cfg: TrainConfig) -> None:
    if not cfg.layers:
        raise InputError("layers: expected at least one block index")
    if len(set(cfg.layers)) != len(cfg.layers) or min(cfg.layers) < 0:
        raise InputError(f"layers={cfg.layers}: expected distinct 0-based block indices")
    _choice("site", cfg.site, SITE_KINDS)
    _check_kind(cfg)
    for name in ("context", "batch_size", "gradient_accumulation", "shuffle_tokens"):
        _positive_int(cfg, name, 2 if name == "context" else 1)
    _positive_int(cfg, "training_tokens", MIN_TRAINING_TOKENS)
    if cfg.training_tokens < cfg.tokens_per_step:
        raise InputError(
            f"training_tokens={cfg.training_tokens}: fewer than one optimizer step "
            f"(batch_size {cfg.batch_size} x context {cfg.context} x gradient_accumulation "
            f"{cfg.gradient_accumulation} = {cfg.tokens_per_step} tokens)"
        )
    if cfg.shuffle_tokens < cfg.micro_batch_tokens:
        raise InputError(
            f"shuffle_tokens={cfg.shuffle_tokens}: expected at least one micro-batch "
            f"({cfg.micro_batch_tokens} tokens)"
        )
    _choice("precision", cfg.precision, PRECISIONS)
    _choice("model_dtype", cfg.model_dtype, MODEL_DTYPES)
    for name in cfg.log_to:
        _choice("log_to", name, LOGGERS)
    if cfg.monitor_every is not None:
        _positive_int(cfg, "monitor_every")
    _positive_int(cfg, "checkpoint_every", 0)
    if not isinstance(cfg.checkpoint_minutes, int | float) or cfg.checkpoint_minutes < 0:
        raise InputError(f"checkpoint_minutes={cfg.checkpoint_minutes!r}: expected >= 0")
    if not 0 < cfg.always_on_threshold <= 1:
        raise InputError(f"always_on_threshold={cfg.always_on_threshold}: expected (0, 1]")
    for key in cfg.layer_overrides:
        _layer_range(key)


def _check_kind(cfg: TrainConfig) -> None:
    _choice("kind", cfg.kind, KINDS)
    if cfg.kind != "sae" and cfg.site != TRANSCODER_SITES[0]:
        raise InputError(
            f"site={cfg.site} with kind {cfg.kind}: a transcoder reads {TRANSCODER_SITES[0]} "
            f"and reconstructs {TRANSCODER_SITES[1]} of the same block; drop --site "
            f"(or use --kind sae to train an SAE on {cfg.site})"
        )
    if cfg.kind == "clt":
        _check_clt(cfg)


def _check_clt(cfg: TrainConfig) -> None:
    if sorted(cfg.layers) != list(range(len(cfg.layers))):
        raise InputError(
            f"layers={cfg.layers} with kind clt: a cross-layer transcoder covers blocks "
            f"0..n-1 with no gap (circuit-tracer's layout), e.g. --layer 0 --layer 1 --layer 2"
        )
    if cfg.architecture not in CLT_TRAINABLE:
        raise InputError(f"architecture={cfg.architecture} with kind clt: expected one of "
                         f"{', '.join(CLT_TRAINABLE)} (circuit-tracer has no TopK or gated "
                         "CLT)")  # fmt: skip
    if cfg.skip:
        raise InputError("skip with kind clt: a cross-layer transcoder has no skip term; "
                         "use --kind transcoder --skip for skip transcoders")  # fmt: skip
    if cfg.layer_overrides:
        raise InputError("layer_overrides with kind clt: a CLT is one dictionary over all "
                         "its blocks; its hyper-parameters cannot differ per block")  # fmt: skip


def _check_sae(cfg: TrainConfig, where: str) -> None:
    _choice(f"{where}architecture", cfg.architecture, ARCHITECTURES)
    if not isinstance(cfg.skip, bool):
        raise InputError(f"{where}skip={cfg.skip!r}: expected true or false")
    if cfg.skip and cfg.kind == "sae":
        raise InputError(f"{where}skip: a linear skip needs kind transcoder (an SAE "
                         "reconstructs its own input, which a skip would copy)")
    _choice(f"{where}b_dec_init", cfg.b_dec_init, B_DEC_INITS)
    ef = cfg.expansion_factor
    if not isinstance(ef, int | float) or not math.isfinite(ef) or ef < MIN_EXPANSION:
        raise InputError(
            f"{where}expansion_factor={ef!r}: expected >= 1. The expansion factor is d_sae / "
            "d_model; below 1 the dictionary has fewer latents than the model has dimensions "
            "and cannot be overcomplete (the guide's 0.25 / 0.2 / 0.15 are not usable)"
        )
    if cfg.architecture in TOPK_ARCHITECTURES:
        _positive_int(cfg, "top_k", MIN_TOP_K)
    for name in PENALTY_FIELDS:
        value = getattr(cfg, name)
        if not isinstance(value, int | float) or not math.isfinite(value) or value < MIN_PENALTY:
            raise InputError(f"{where}{name}={value!r}: expected a number >= 0")
    if cfg.architecture == "relu" and cfg.l1_penalty <= 0 and cfg.sparsity_penalty <= 0:
        raise InputError(
            f"{where}architecture relu with l1_penalty=0 and sparsity_penalty=0: a ReLU SAE "
            "needs a sparsity penalty or it learns a dense code; set l1_penalty (e.g. 5) or "
            "use architecture topk"
        )
    if cfg.architecture == "jumprelu" and cfg.sparsity_penalty <= 0 and cfg.l1_penalty <= 0:
        raise InputError(
            f"{where}architecture jumprelu needs sparsity_penalty > 0 (its L0 penalty, e.g. 1)"
        )
    if not 0 < cfg.diversity_target_density < 1:
        raise InputError(
            f"{where}diversity_target_density={cfg.diversity_target_density}: expected (0, 1)"
        )
    _check_dead_threshold(cfg, where)
    lr = cfg.learning_rate
    if lr is not None and (
        not isinstance(lr, int | float) or not LEARNING_RATE_ABOVE < lr < LEARNING_RATE_BELOW
    ):
        raise InputError(f"{where}learning_rate={lr!r}: expected a number in (0, 1)")
    _positive_int(cfg, "lr_warmup_steps", 0)
    if not 0 <= cfg.lr_decay_fraction <= 1:
        raise InputError(f"{where}lr_decay_fraction={cfg.lr_decay_fraction}: expected [0, 1]")
    if not cfg.jumprelu_bandwidth > 0 or not cfg.jumprelu_init_threshold > 0:
        raise InputError(f"{where}jumprelu_bandwidth / jumprelu_init_threshold: expected > 0")


def _check_dead_threshold(cfg: TrainConfig, where: str) -> None:
    value = cfg.dead_feature_threshold
    if not isinstance(value, int) or isinstance(value, bool) or value < MIN_DEAD_FEATURE_TOKENS:
        raise InputError(
            f"{where}dead_feature_threshold={value!r}: expected a number of tokens (>= 1) "
            "after which a latent that has not fired counts as dead for AuxK, e.g. 100000. "
            "A fraction such as the guide's 0.1 ('10%') is not a token count, and as a "
            "density threshold it would call most healthy latents dead"
        )


def check_against_model(cfg: TrainConfig, n_layers: int, d_model: int, model: str) -> None:
    """Checks that need the model: layer range, and k against the dictionary size."""
    for layer in cfg.layers:
        if layer >= n_layers:
            raise InputError(
                f"layer {layer} out of range: model {model} has {n_layers} blocks "
                f"(0..{n_layers - 1})"
            )
        sub = cfg.for_layer(layer)
        d_sae = d_sae_for(sub, d_model)
        if sub.architecture in TOPK_ARCHITECTURES and not top_k_fits(sub.top_k, d_sae):
            raise InputError(
                f"layer {layer}: top_k={sub.top_k} exceeds the dictionary size d_sae={d_sae} "
                f"(expansion_factor {sub.expansion_factor} x d_model {d_model})"
            )


def d_sae_for(cfg: TrainConfig, d_in: int) -> int:
    return dictionary_size(cfg.expansion_factor, d_in)
