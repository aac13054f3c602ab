"""Read activations at sites with forward hooks, stopping after the deepest block needed.

Site definitions (SPEC §1), matching TransformerLens / SAELens hook points:

- `resid_pre L`  = the hidden states entering block L  (= HF `hidden_states[L]`).
- `resid_post L` = the hidden states block L returns (= HF `hidden_states[L+1]` for every L
  except the last block, where HF replaces the last entry with the output of the final
  norm; we always return the block's own, un-normed output, as SAELens does).
- `mlp_in L`     = the input of block L's MLP module, i.e. after the pre-MLP norm
  (`post_attention_layernorm` in Llama/Qwen2/Mistral/Gemma/GPT-NeoX, `ln_2` in GPT-2,
  `pre_feedforward_layernorm` in Gemma2/3): TransformerLens `ln2.hook_normalized`, the
  input a transcoder reads. With GPT-NeoX's parallel residual it is the norm of resid_pre.
- `mlp_out L`    = the output of block L's MLP module. Models with post-norms (Gemma2/3,
  Olmo2: blocks with a `post_feedforward_layernorm`) read it after that norm, since that
  is what is added to the residual (TransformerLens `hook_mlp_out`).
- `attn_out L`   = the output of block L's attention module (first element when it
  returns a tuple); for post-norm models after `post_attention_layernorm`.

Supported layouts: Llama family incl. Mistral/Qwen2/Gemma (`model.layers`), GPT-2
(`transformer.h`), GPT-NeoX (`gpt_neox.layers`), and the same without the LM head.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from saedoctor.errors import InputError
from saedoctor.sae.site import Site

# Where the decoder blocks live, per architecture family (first match wins).
_BLOCK_PATHS = (
    "model.layers",  # Llama, Mistral, Qwen2, Gemma, Gemma2/3 text models
    "model.language_model.layers",  # multimodal wrappers (Gemma3ForConditionalGeneration)
    "transformer.h",  # GPT-2
    "gpt_neox.layers",  # GPT-NeoX / Pythia
    "layers",  # a bare base model (LlamaModel, GPTNeoXModel)
    "h",  # bare GPT2Model
)
_ATTN_NAMES = ("self_attn", "attn", "attention")
_MLP_NAMES = ("mlp", "feed_forward")


class _StopForward(Exception):
    """Raised from the hook that captures the last needed site, so later blocks never run."""


def _get_path(root: nn.Module, path: str) -> Any:
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's list of decoder blocks; InputError for an unsupported architecture."""
    for path in _BLOCK_PATHS:
        blocks = _get_path(model, path)
        if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
            return blocks
    raise InputError(
        f"model {_model_name(model)}: unsupported architecture {type(model).__name__} "
        f"(expected decoder blocks at one of {', '.join(_BLOCK_PATHS)})"
    )


def n_layers(model: nn.Module) -> int:
    return len(decoder_blocks(model))


def d_model(model: nn.Module) -> int:
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in ("hidden_size", "n_embd", "d_model"):
        value = getattr(text, key, None)
        if isinstance(value, int):
            return value
    raise InputError(f"model {_model_name(model)}: config has no hidden size")


def _model_name(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "name_or_path", "") or type(model).__name__)


def _child(block: nn.Module, names: tuple[str, ...], what: str) -> nn.Module:
    for name in names:
        module = getattr(block, name, None)
        if isinstance(module, nn.Module):
            return module
    raise InputError(f"block {type(block).__name__} has no {what} module (looked for {names})")


def _has_post_norms(block: nn.Module) -> bool:
    # Gemma2/3 and Olmo2 norm the sublayer outputs before adding them to the residual.
    # (Llama's `post_attention_layernorm` is a *pre*-MLP norm, hence this test.)
    return isinstance(getattr(block, "post_feedforward_layernorm", None), nn.Module)


# Sites read from a module's input (a forward pre-hook) rather than its output.
INPUT_KINDS = ("resid_pre", "mlp_in")
# Blocks pass hidden states positionally; the keyword names cover a caller that does not.
_INPUT_KWARGS = ("hidden_states", "x")


def site_module(block: nn.Module, kind: str) -> nn.Module:
    """The module whose output (or, for INPUT_KINDS, input) is the site."""
    if kind in ("resid_pre", "resid_post"):
        return block
    if kind == "mlp_in":
        return _child(block, _MLP_NAMES, "MLP")
    post = _has_post_norms(block)
    if kind == "mlp_out":
        return block.post_feedforward_layernorm if post else _child(block, _MLP_NAMES, "MLP")
    if post:
        return block.post_attention_layernorm
    return _child(block, _ATTN_NAMES, "attention")


def module_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden states a forward pre-hook (with_kwargs=True) sees entering a module."""
    if args:
        return args[0]
    for key in _INPUT_KWARGS:
        if key in kwargs:
            return kwargs[key]
    raise TypeError(f"no hidden-states input among keyword arguments {sorted(kwargs)}")


def with_module_input(args: tuple, kwargs: dict, value: torch.Tensor) -> tuple[tuple, dict]:
    """(args, kwargs) with the hidden-states input replaced by `value`."""
    if args:
        return (value, *args[1:]), kwargs
    key = next((k for k in _INPUT_KWARGS if k in kwargs), _INPUT_KWARGS[0])
    return args, {**kwargs, key: value}


def _first_tensor(value: Any) -> torch.Tensor:
    # transformers 5 blocks return a tensor; older ones and attention modules a tuple.
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    raise TypeError(f"expected a tensor or a tuple starting with one, got {type(value).__name__}")


class SiteReader:
    """Capture activations at several sites in one forward pass per `read()`.

    Use as a context manager (hooks are removed on exit). Returned tensors are ordinary
    (non-inference) tensors, so they can feed autograd, e.g. SAE training; they keep the
    model's dtype and device (cast to float32 before accumulating statistics).
    """

    def __init__(self, model: nn.Module, sites: Iterable[Site]) -> None:
        self.model = model
        self.sites = tuple(dict.fromkeys(sites))
        if not self.sites:
            raise InputError("no sites to read: expected at least one site")
        self._blocks = decoder_blocks(model)
        self._check_layers()
        self._captured: dict[Site, torch.Tensor] = {}
        self._handles: list[Any] = []
        self._active = False  # hooks act only inside read(): other forwards run untouched

    def _check_layers(self) -> None:
        count = len(self._blocks)
        for site in self.sites:
            if site.layer >= count:
                raise InputError(
                    f"layer {site.layer} out of range: model {_model_name(self.model)} has "
                    f"{count} blocks (0..{count - 1})"
                )

    def __enter__(self) -> SiteReader:
        for site in self.sites:
            self._handles.append(self._register(site))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _register(self, site: Site) -> Any:
        module = site_module(self._blocks[site.layer], site.kind)
        if site.kind in INPUT_KINDS:

            def pre_hook(_m: nn.Module, args: tuple, kwargs: dict) -> None:
                self._capture(site, module_input(args, kwargs))

            return module.register_forward_pre_hook(pre_hook, with_kwargs=True)

        def hook(_m: nn.Module, _args: tuple, output: Any) -> None:
            self._capture(site, _first_tensor(output))

        return module.register_forward_hook(hook)

    def _capture(self, site: Site, value: torch.Tensor) -> None:
        if not self._active:
            return
        self._captured[site] = value.detach()
        if len(self._captured) == len(self.sites):
            raise _StopForward

    def read(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> dict[Site, torch.Tensor]:
        """One (truncated) forward pass; {site: [B, T, d_model]} for every site."""
        if not self._handles:
            raise RuntimeError("SiteReader.read() must be called inside `with SiteReader(...)`")
        self._captured = {}
        device = next(self._blocks[0].parameters()).device
        kwargs: dict[str, Any] = {"input_ids": input_ids.to(device), "use_cache": False}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask.to(device)
        self._active = True
        try:
            with torch.inference_mode():
                self.model(**kwargs)
        except _StopForward:
            pass
        finally:
            self._active = False
        captured, self._captured = self._captured, {}
        missing = [str(s) for s in self.sites if s not in captured]
        if missing:
            raise RuntimeError(f"forward pass did not reach sites: {', '.join(missing)}")
        # Clone outside inference mode: inference tensors cannot be saved for backward.
        return {site: captured[site].clone() for site in self.sites}
