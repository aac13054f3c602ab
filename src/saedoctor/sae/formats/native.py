"""saedoctor's native format: the SAELens 6 disk layout (`cfg.json` + `sae_weights.safetensors`).

Reads any SAELens-written directory (6.x and pre-6.0 configs) and writes directories that
`sae_lens.SAE.load_from_disk` loads. Our own `"saedoctor"` block in `cfg.json` keeps what
SAELens cannot express (batchtopk, site, provenance) so we reload exactly what we saved.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch

from saedoctor.errors import InputError
from saedoctor.sae.formats.base import (
    RawSAE,
    as_int,
    json_safe,
    read_json,
    read_safetensors,
    require,
    table,
)
from saedoctor.sae.model import SAE
from saedoctor.sae.site import Site, parse_hook_name

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
EXPECTS = f"{CFG_FILE} + {WEIGHTS_FILE} (SAELens / saedoctor native)"
# SAELens switched to nested `metadata` in 6.0; configs claiming this version are read as 6.x.
SAELENS_FORMAT_VERSION = "6.0.0"
BLOCK = "saedoctor"

_ARCH_FROM_SAELENS = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "gated": "gated"}
# SAELens applies these at inference as the identity (the scaling is folded at save time).
# Pre-6 configs say True for "expected_average_only_in".
_IDENTITY_NORMS = {None, False, True, "none", "expected_average_only_in", "covariance_whitening"}
# Pre-6 top-level keys worth keeping as training provenance.
_PROVENANCE_KEYS = (
    "model_name", "hook_name", "dataset_path", "context_size", "training_tokens",
    "prepend_bos", "exclude_special_tokens", "neuronpedia_id", "model_class_name",
    "model_from_pretrained_kwargs", "hook_head_index", "seqpos_slice", "sae_lens_version",
    "sae_lens_training_version", "l1_coefficient", "lr", "train_batch_size_tokens",
)


def detect(path: Path) -> bool:
    return path.is_dir() and (path / CFG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def load(path: Path) -> RawSAE:
    cfg = read_json(path / CFG_FILE)
    tensors = read_safetensors(path / WEIGHTS_FILE)
    if isinstance(cfg.get(BLOCK), dict):
        return _from_block(cfg, tensors, path)
    return from_saelens_dict(cfg, tensors, path)


# -- reading ------------------------------------------------------------------------------
def _from_block(cfg: dict[str, Any], tensors: dict[str, torch.Tensor], path: Path) -> RawSAE:
    """A directory saedoctor wrote: the block is authoritative."""
    block = cfg[BLOCK]
    arch = require(block, "architecture", path / CFG_FILE)
    site = _block_site(block.get("site"), path)
    output_site = _block_site(block.get("output_site"), path)
    d_out = block.get("d_out")
    tensors = dict(tensors)
    if arch == "gated" and "b_enc" not in tensors and "W_enc" in tensors:
        tensors["b_enc"] = torch.zeros(tensors["W_enc"].shape[-1], dtype=tensors["W_enc"].dtype)
    k = block.get("k")
    return RawSAE(
        architecture=arch,
        d_in=as_int(require(cfg, "d_in", path), "d_in", path),
        d_sae=as_int(require(cfg, "d_sae", path), "d_sae", path),
        tensors=tensors,
        k=None if k is None else as_int(k, "k", path),
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        site=site,
        model_name=block.get("model_name"),
        metadata=dict(table(block, "metadata", path / CFG_FILE)),
        d_out=None if d_out is None else as_int(d_out, "d_out", path),
        output_site=output_site,
        transcoder=output_site is not None and output_site != site,
    )


def _block_site(value: Any, path: Path) -> Site | None:
    if not isinstance(value, dict):
        return None
    return Site(as_int(value.get("layer"), "site.layer", path), value.get("kind", "resid_post"))


def _is_pre_6(cfg: dict[str, Any], source: Path | str) -> bool:
    meta = table(cfg, "metadata", source)
    version = cfg.get("sae_lens_version") or meta.get("sae_lens_version")
    if not version:
        # SAELens 6 moved provenance into a nested `metadata` table; older configs had none.
        return "metadata" not in cfg
    try:
        return int(str(version).split(".")[0]) < 6
    except ValueError:
        return True


def _normalise_pre_6(cfg: dict[str, Any], source: Path | str) -> dict[str, Any]:
    """Rename pre-6.0 keys the way SAELens's handle_pre_6_0_config does."""
    renames = {"hook_point": "hook_name", "activation_fn_str": "activation_fn",
               "hook_point_layer": "hook_layer"}
    out = {renames.get(k, k): v for k, v in cfg.items()}
    kwargs = table(out, "activation_fn_kwargs", source)
    if out.get("activation_fn") == "topk" and kwargs.get("k") is not None:
        out["architecture"] = "topk"
        out["k"] = kwargs["k"]
    out.setdefault("architecture", "standard")
    out["metadata"] = {k: out[k] for k in _PROVENANCE_KEYS if out.get(k) is not None}
    return out


def from_saelens_dict(
    cfg: dict[str, Any], tensors: dict[str, torch.Tensor], source: Path | str
) -> RawSAE:
    """Convert a SAELens config dict (any version) and its state dict."""
    cfg = _normalise_pre_6(cfg, source) if _is_pre_6(cfg, source) else dict(cfg)
    meta = dict(table(cfg, "metadata", source))
    _check_supported(cfg, source)
    arch = _ARCH_FROM_SAELENS[cfg.get("architecture", "standard")]
    tensors = _saelens_tensors(dict(tensors), cfg, arch, source)
    hook = meta.get("hook_name") or cfg.get("hook_name")
    site = parse_hook_name(hook) if isinstance(hook, str) else None
    k = cfg.get("k") if arch == "topk" else None
    return RawSAE(
        architecture=arch,
        d_in=as_int(require(cfg, "d_in", source), "d_in", source),
        d_sae=as_int(require(cfg, "d_sae", source), "d_sae", source),
        tensors=tensors,
        k=None if k is None else as_int(k, "k", source),
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        site=site,
        model_name=meta.get("model_name") or cfg.get("model_name"),
        metadata=json_safe({**meta, "source_config": _without(cfg, "metadata")}),
    )


def _without(cfg: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if k != key}


def _check_supported(cfg: dict[str, Any], source: Path | str) -> None:
    arch = cfg.get("architecture", "standard")
    if arch not in _ARCH_FROM_SAELENS:
        raise InputError(
            f"{source}: SAELens architecture {arch!r} is not supported; expected one of "
            f"{', '.join(_ARCH_FROM_SAELENS)}"
        )
    act = cfg.get("activation_fn") or "relu"
    if arch == "standard" and act != "relu":
        raise InputError(f"{source}: activation_fn {act!r} is not supported; expected relu")
    norm = cfg.get("normalize_activations")
    if norm not in _IDENTITY_NORMS:
        raise InputError(
            f"{source}: normalize_activations={norm!r} rescales inputs at run time, which "
            "saedoctor does not support; expected 'none'"
        )
    if cfg.get("reshape_activations", "none") not in (None, "none"):
        raise InputError(f"{source}: hook_z (per-head) SAEs are not supported")


def _saelens_tensors(
    tensors: dict[str, torch.Tensor], cfg: dict[str, Any], arch: str, source: Path | str
) -> dict[str, torch.Tensor]:
    scale = tensors.pop("scaling_factor", None)
    if scale is None:
        scale = tensors.pop("finetuning_scaling_factor", None)
    if scale is not None and not torch.allclose(scale.float(), torch.ones_like(scale.float())):
        raise InputError(f"{source}: a finetuning scaling_factor is not supported")
    if "log_threshold" in tensors and "threshold" not in tensors:
        tensors["threshold"] = tensors.pop("log_threshold").exp()
    if arch != "jumprelu":
        tensors.pop("threshold", None)  # a stray threshold would turn on threshold mode
    if arch == "gated" and "b_enc" not in tensors and "W_enc" in tensors:
        tensors["b_enc"] = torch.zeros(tensors["W_enc"].shape[-1], dtype=tensors["W_enc"].dtype)
    if arch == "topk" and cfg.get("rescale_acts_by_decoder_norm"):
        _fold_decoder_norm(tensors, source)
    return tensors


def _fold_decoder_norm(tensors: dict[str, torch.Tensor], source: Path | str) -> None:
    """SAELens topk `rescale_acts_by_decoder_norm`: fold the norms in, as SAELens does on save.

    Scaling pre-activations by ‖W_dec_i‖ and dividing codes by it before decoding equals an SAE
    with W_enc, b_enc scaled by the norm and unit-norm decoder rows.
    """
    for name in ("W_enc", "b_enc", "W_dec"):
        if name not in tensors:
            raise InputError(f"{source}: missing SAE tensor {name}")
    norm = tensors["W_dec"].norm(dim=-1)
    tensors["W_enc"] = tensors["W_enc"] * norm
    tensors["b_enc"] = tensors["b_enc"] * norm
    tensors["W_dec"] = tensors["W_dec"] / norm.unsqueeze(1)


# -- writing ------------------------------------------------------------------------------
def _saelens_arch(sae: SAE) -> str:
    arch = sae.cfg.architecture
    if arch == "relu":
        return "standard"
    if arch == "batchtopk":
        # SAELens has no inference batchtopk: it exports one as jumprelu with the threshold.
        return "jumprelu" if sae.threshold is not None else "topk"
    return arch


def _dtype_name(sae: SAE) -> str:
    return str(sae.dtype).removeprefix("torch.")


def _saelens_metadata(sae: SAE) -> dict[str, Any]:
    meta = sae.cfg.metadata
    out: dict[str, Any] = {
        "sae_lens_version": SAELENS_FORMAT_VERSION,
        "sae_lens_training_version": SAELENS_FORMAT_VERSION,
        "model_name": sae.cfg.model_name,
        "hook_name": sae.cfg.site.hook_name if sae.cfg.site else None,
        "hook_head_index": None,
        "prepend_bos": meta.get("prepend_bos", True),
    }
    # Only keys SAELens knows: its SAEMetadata turns every key into an attribute.
    for key in ("dataset_path", "context_size", "neuronpedia_id", "exclude_special_tokens"):
        if meta.get(key) is not None:
            out[key] = meta[key]
    return out


def saelens_config(sae: SAE) -> dict[str, Any]:
    """The `cfg.json` content for `sae`."""
    arch = _saelens_arch(sae)
    cfg: dict[str, Any] = {
        "architecture": arch,
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
        "dtype": _dtype_name(sae),
        "device": "cpu",
        "apply_b_dec_to_input": sae.cfg.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": _saelens_metadata(sae),
    }
    if arch == "topk":
        cfg["k"] = sae.cfg.k
        cfg["rescale_acts_by_decoder_norm"] = False
    site = sae.cfg.site
    meta = {k: v for k, v in sae.cfg.metadata.items() if k not in ("source_path", "source_format")}
    if sae.cfg.metadata.get("source_format") not in (None, "native"):
        meta["converted_from"] = sae.cfg.metadata["source_format"]
    cfg[BLOCK] = {
        "format_version": 1,
        "architecture": sae.cfg.architecture,
        "k": sae.cfg.k,
        "site": _site_dict(site),
        # A transcoder's decoder writes elsewhere, possibly at another width.
        "output_site": _site_dict(sae.cfg.output_site),
        "d_out": sae.cfg.d_out,
        "model_name": sae.cfg.model_name,
        "metadata": meta,
    }
    return json_safe(cfg)


def _site_dict(site: Site | None) -> dict[str, Any] | None:
    return {"layer": site.layer, "kind": site.kind} if site else None


def saelens_tensors(sae: SAE) -> dict[str, torch.Tensor]:
    """The state dict SAELens expects for `sae`'s exported architecture."""
    out = {k: v.detach().cpu().contiguous() for k, v in sae.weights().items()}
    if sae.cfg.architecture == "gated":
        out.pop("b_enc", None)  # SAELens GatedSAE has no b_enc and loads strictly
    return out


def _write_into(directory: Path, cfg: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    import json

    from safetensors.torch import save_file

    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    (directory / CFG_FILE).write_text(json.dumps(cfg, indent=2), encoding="utf-8")


def save(sae: SAE, directory: str | Path) -> Path:
    """Write `sae` to `directory` (created if needed); returns the directory."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise InputError(f"{directory}: exists and is not a directory; expected a directory")
    directory.parent.mkdir(parents=True, exist_ok=True)
    cfg, tensors = saelens_config(sae), saelens_tensors(sae)
    # Same parent, so the final rename stays on one filesystem; mkdir (not mkdtemp, which
    # makes 0700 folders) so the result gets the user's usual permissions.
    tmp = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        _write_into(tmp, cfg, tensors)
        if not directory.exists():
            os.replace(tmp, directory)  # a new directory appears whole or not at all
            return directory
        # An existing directory may hold the user's other files, so it is not swapped whole:
        # each file is replaced atomically (a crash between the two can mix versions).
        for name in (WEIGHTS_FILE, CFG_FILE):
            os.replace(tmp / name, directory / name)
        return directory
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
