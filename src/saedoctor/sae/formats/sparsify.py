"""EleutherAI sparsify (and its predecessor `sae`): one hookpoint folder per SAE.

Layout: `<run>/<hookpoint>/cfg.json` + `sae.safetensors`, tensors `encoder.weight [d_sae, d_in]`,
`encoder.bias`, `W_dec [d_sae, d_in]`, `b_dec`. Forward pass (sparse_coder.py / fused_encoder.py):
`top_k(relu((x - b_dec) @ encoder.weight.T + encoder.bias))`, decode `acts @ W_dec + b_dec`.

Transcoders (`transcode: true`) skip the `- b_dec` and hook a module's input and output:
on `layers.L.mlp` they read the MLP's input and write its output. Skip transcoders
(`skip_connection: true`) add `x @ W_skip.mT`, `W_skip [d_in, d_in]` stored `[out, in]`.
"""

from __future__ import annotations

from pathlib import Path

from saedoctor.errors import InputError
from saedoctor.sae.formats.base import (
    RawSAE,
    as_int,
    json_safe,
    need,
    read_json,
    read_safetensors,
    require,
    transposed,
)
from saedoctor.sae.site import Site, parse_hook_name

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"
EXPECTS = f"{CFG_FILE} + {WEIGHTS_FILE} (EleutherAI sparsify hookpoint folder)"
# SparseCoderConfig defaults, used when a field is absent (sparsify does the same).
_DEFAULTS = {"k": 32, "expansion_factor": 32, "num_latents": 0, "activation": "topk"}
# Options that change the forward pass in ways a plain SAE cannot represent.
_UNSUPPORTED = ("embed_skip", "gram_lookup", "signed")


def detect(path: Path) -> bool:
    return path.is_dir() and (path / CFG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def load(path: Path) -> RawSAE:
    src = path / CFG_FILE
    cfg = {**_DEFAULTS, **read_json(src)}
    for option in _UNSUPPORTED:
        if cfg.get(option):
            raise InputError(f"{src}: sparsify option {option}=true is not supported")
    if cfg["activation"] != "topk":
        raise InputError(f"{src}: sparsify activation {cfg['activation']!r}: expected 'topk'")
    d_in = as_int(require(cfg, "d_in", src), "d_in", src)
    num_latents = as_int(cfg["num_latents"], "num_latents", src)
    d_sae = num_latents or d_in * as_int(cfg["expansion_factor"], "expansion_factor", src)
    weights_path = path / WEIGHTS_FILE
    raw = read_safetensors(weights_path)
    transcode = bool(cfg.get("transcode"))
    tensors = {
        "W_enc": transposed(need(raw, ("encoder.weight",), weights_path), "encoder.weight",
                            weights_path),
        "b_enc": need(raw, ("encoder.bias",), weights_path),
        "W_dec": need(raw, ("W_dec",), weights_path),
        "b_dec": need(raw, ("b_dec",), weights_path),
    }
    if cfg.get("skip_connection") or "W_skip" in raw:
        w_skip = need(raw, ("W_skip",), weights_path)
        tensors["W_skip"] = transposed(w_skip, "W_skip", weights_path)  # applied x @ W_skip.mT
    site, output_site = _sites(path, transcode)
    run_cfg = _run_config(path)
    metadata = {"hookpoint": path.name, "source_config": json_safe(cfg)}
    if run_cfg:
        metadata["run_config"] = json_safe(run_cfg)
        for ours, theirs in (("dataset_path", "dataset"), ("context_size", "ctx_len")):
            if run_cfg.get(theirs) is not None:
                metadata[ours] = run_cfg[theirs]
    return RawSAE(
        architecture="topk",
        d_in=d_in,
        d_sae=d_sae,
        tensors=tensors,
        k=as_int(cfg["k"], "k", src),
        apply_b_dec_to_input=not transcode,
        site=site,
        output_site=output_site,
        transcoder=transcode,
        model_name=run_cfg.get("model") if run_cfg else None,
        metadata=metadata,
    )


def _sites(path: Path, transcode: bool) -> tuple[Site | None, Site | None]:
    """The hookpoint folder's name is the module; a transcoder maps its input to its output."""
    site = parse_hook_name(path.name)
    if not transcode or site is None:
        return site, None
    if site.kind not in ("mlp_in", "mlp_out"):
        raise InputError(
            f"{path}: sparsify transcoder on hookpoint {path.name!r}; saedoctor reads MLP "
            "transcoders only (hookpoints like layers.3.mlp)"
        )
    return Site(site.layer, "mlp_in"), Site(site.layer, "mlp_out")


def _run_config(path: Path) -> dict | None:
    """The training run's `config.json` beside the hookpoint folders: model and dataset."""
    run_file = path.parent / "config.json"
    if not run_file.is_file():
        return None
    try:
        return read_json(run_file)
    except InputError:
        return None  # optional provenance: a broken run config must not block loading
