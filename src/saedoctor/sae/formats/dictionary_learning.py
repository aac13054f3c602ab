"""saprmarks/dictionary_learning: a folder with `ae.pt` (state dict) and `config.json`.

`config.json` = `{"trainer": {dict_class, activation_dim, dict_size, k, layer, lm_name,
submodule_name, ...}, "buffer": {ctx_len, out_batch_size, ...}}`. Forward passes, per class
(dictionary.py, trainers/top_k.py, trainers/batch_top_k.py, trainers/matryoshka_batch_top_k.py):

- AutoEncoder: `relu(encoder(x - bias))`, `decoder(f) + bias`
- AutoEncoderNew: `relu(encoder(x))`, `decoder(f)` (decoder has its own bias)
- AutoEncoderTopK: top-k of `relu(encoder(x - b_dec))`, `decoder(f) + b_dec`
- BatchTopKSAE / MatryoshkaBatchTopKSAE: inference uses the learned global threshold,
  `f * (f > threshold)` with `f = relu(pre)`
- JumpReluAutoEncoder: no b_dec subtraction, `relu(pre * (pre > threshold))`
- GatedAutoEncoder: gate `encoder(x - decoder_bias) + gate_bias > 0`, magnitude
  `relu(exp(r_mag) * encoder(...) + mag_bias)`
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from saedoctor.errors import InputError
from saedoctor.sae.formats.base import (
    RawSAE,
    as_int,
    json_safe,
    need,
    pick,
    read_json,
    read_torch_state_dict,
    table,
    transposed,
)
from saedoctor.sae.site import SITE_KINDS, Site, parse_hook_name

WEIGHTS_FILE = "ae.pt"
CFG_FILE = "config.json"
EXPECTS = f"{WEIGHTS_FILE} + {CFG_FILE} (dictionary_learning)"

# dict_class -> (architecture, apply_b_dec_to_input)
_CLASSES = {
    "AutoEncoder": ("relu", True),
    "AutoEncoderNew": ("relu", False),
    "AutoEncoderTopK": ("topk", True),
    "BatchTopKSAE": ("batchtopk", True),
    "MatryoshkaBatchTopKSAE": ("batchtopk", True),
    "JumpReluAutoEncoder": ("jumprelu", False),
    "GatedAutoEncoder": ("gated", True),
}
_SHORT_SUBMODULES = {"resid": "resid_post", "mlp": "mlp_out", "attn": "attn_out"}
_SUBMODULE_LAYER = re.compile(r"^(?P<kind>[a-z_]+?)_layer_(?P<layer>\d+)$")


def detect(path: Path) -> bool:
    return path.is_dir() and (path / WEIGHTS_FILE).is_file() and (path / CFG_FILE).is_file()


def load(path: Path) -> RawSAE:
    cfg = read_json(path / CFG_FILE)
    trainer = cfg.get("trainer")
    if not isinstance(trainer, dict):
        raise InputError(f"{path / CFG_FILE}: expected a dictionary_learning config with 'trainer'")
    weights = path / WEIGHTS_FILE
    raw = read_torch_state_dict(weights)
    dict_class = trainer.get("dict_class") or _guess_class(raw)
    if dict_class not in _CLASSES:
        raise InputError(
            f"{path / CFG_FILE}: dict_class {dict_class!r} is not supported; expected one of "
            f"{', '.join(_CLASSES)}"
        )
    arch, apply_b_dec = _CLASSES[dict_class]
    tensors = _tensors(raw, arch, weights)
    d_in = trainer.get("activation_dim", tensors["W_enc"].shape[0])
    d_sae = trainer.get("dict_size", tensors["W_enc"].shape[-1])
    return RawSAE(
        architecture=arch,
        d_in=as_int(d_in, "activation_dim", path / CFG_FILE),
        d_sae=as_int(d_sae, "dict_size", path / CFG_FILE),
        tensors=tensors,
        k=_k(raw, trainer, path) if arch in ("topk", "batchtopk") else None,
        apply_b_dec_to_input=apply_b_dec,
        site=_site(trainer, path),
        model_name=trainer.get("lm_name"),
        metadata=_metadata(cfg, dict_class, path / CFG_FILE),
    )


def _guess_class(raw: dict[str, torch.Tensor]) -> str:
    """Older configs lack dict_class; the state-dict keys tell the classes apart."""
    if "r_mag" in raw:
        return "GatedAutoEncoder"
    if "W_enc" in raw and "k" not in raw:
        return "JumpReluAutoEncoder"
    if "W_enc" in raw:
        return "MatryoshkaBatchTopKSAE"
    if "k" in raw:
        return "AutoEncoderTopK"
    return "AutoEncoderNew" if "decoder.bias" in raw and "bias" not in raw else "AutoEncoder"


def _tensors(raw: dict[str, torch.Tensor], arch: str, src: Path) -> dict[str, torch.Tensor]:
    w_enc = pick(raw, ("W_enc",))
    if w_enc is None:
        w_enc = transposed(need(raw, ("encoder.weight",), src), "encoder.weight", src)
    w_dec = pick(raw, ("W_dec",))
    if w_dec is None:
        w_dec = transposed(need(raw, ("decoder.weight",), src), "decoder.weight", src)
    out = {
        "W_enc": w_enc,
        "W_dec": w_dec,
        "b_dec": need(raw, ("b_dec", "bias", "decoder_bias", "decoder.bias"), src),
    }
    if arch == "gated":
        out["b_enc"] = torch.zeros(w_enc.shape[-1], dtype=w_enc.dtype)  # unused by gated
        out["b_gate"] = need(raw, ("gate_bias",), src)
        out["b_mag"] = need(raw, ("mag_bias",), src)
        out["r_mag"] = need(raw, ("r_mag",), src)
    else:
        out["b_enc"] = need(raw, ("b_enc", "encoder.bias"), src)
    if arch in ("jumprelu", "batchtopk"):
        # AutoEncoderTopK also stores a threshold, but its encode() ignores it by default.
        out["threshold"] = need(raw, ("threshold",), src)
    return out


def _k(raw: dict[str, torch.Tensor], trainer: dict[str, Any], path: Path) -> int:
    # The module runs on its `k` buffer; the trainer's k is only the training target.
    if "k" in raw:
        return as_int(raw["k"], "k", path / WEIGHTS_FILE)
    if trainer.get("k") is None:
        raise InputError(f"{path}: top-k SAE without k in {WEIGHTS_FILE} or {CFG_FILE}")
    return as_int(trainer["k"], "k", path / CFG_FILE)


def _site(trainer: dict[str, Any], path: Path) -> Site | None:
    name = trainer.get("submodule_name")
    layer = trainer.get("layer")
    if isinstance(name, str):
        if site := parse_hook_name(name):
            return site
        if m := _SUBMODULE_LAYER.match(name):
            kind = _SHORT_SUBMODULES.get(m.group("kind"), m.group("kind"))
            if kind in SITE_KINDS:
                return Site(int(m.group("layer")), kind)
        kind = _SHORT_SUBMODULES.get(name, name)
        if kind not in SITE_KINDS:
            return None  # e.g. embeddings: no decoder-block site to name
    else:
        kind = "resid_post"  # dictionary_learning's default submodule is the residual stream
    return None if layer is None else Site(as_int(layer, "layer", path / CFG_FILE), kind)


def _metadata(cfg: dict[str, Any], dict_class: str, source: Path) -> dict[str, Any]:
    trainer, buffer = cfg["trainer"], table(cfg, "buffer", source)
    meta: dict[str, Any] = {"dict_class": dict_class, "source_config": json_safe(cfg)}
    if buffer.get("ctx_len") is not None:
        meta["context_size"] = buffer["ctx_len"]
    steps, batch = trainer.get("steps"), buffer.get("out_batch_size")
    if isinstance(steps, int) and isinstance(batch, int):
        meta["training_tokens"] = steps * batch
    if trainer.get("submodule_name") is None and trainer.get("layer") is not None:
        meta["site_assumed"] = "resid_post (config has no submodule_name)"
    return meta
