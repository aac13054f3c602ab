"""circuit-tracer (0.5.0) transcoder sets: a folder with `config.yaml` and one file per layer.

`config.yaml`: `model_kind: transcoder_set`, `feature_input_hook` / `feature_output_hook`
(TransformerLens names inside `blocks.L`, e.g. `mlp.hook_in` / `mlp.hook_out` or
`ln2.hook_normalized` / `hook_mlp_out`), and either `transcoders: [file, ...]` (layer i = entry
i) or files `layer_{i}.safetensors`, i = 0..n-1 with no gap. Each per-layer transcoder
(SingleLayerTranscoder.to_safetensors) holds `W_enc [d_t, d_in]` (rows are features, the
transpose of SPEC §1), `W_dec [d_t, d_out]`, `b_enc`, `b_dec`, optional
`activation_function.threshold [d_t]` and `W_skip [d_out, d_in]`. Forward pass:
`pre = x @ W_enc.T + b_enc` (no b_dec subtraction), `a = pre * (pre > threshold)` or
`relu(pre)`, `out = a @ W_dec + b_dec + x @ W_skip.T`.

`model_kind: cross_layer_transcoder` folders (`load_clt`) hold `W_enc_{i}.safetensors`
(`W_enc_{i} [d_t, d_model]`, `b_enc_{i}`, `b_dec_{i}`, optional `threshold_{i}`) and
`W_dec_{i}.safetensors` (`W_dec_{i} [d_t, n_layers - i, d_model]`), read into a
`CrossLayerTranscoder` whose decoder stays on disk (`SafetensorsDecoderSource`).
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from saedoctor.errors import InputError
from saedoctor.sae.formats import gemma_scope
from saedoctor.sae.formats.base import (
    RawSAE,
    as_int,
    brief,
    json_safe,
    read_safetensors,
    transposed,
)
from saedoctor.sae.model import Dictionary

if TYPE_CHECKING:
    from saedoctor.sae.clt import CrossLayerTranscoder
from saedoctor.sae.site import is_transcoder_site, parse_hook_name

CFG_FILE = "config.yaml"
EXPECTS = f"{CFG_FILE} + layer_{{i}}.safetensors (circuit-tracer transcoder set)"
EXPECTS_CLT = (
    f"{CFG_FILE} (model_kind: cross_layer_transcoder) + W_enc_{{i}}.safetensors + "
    "W_dec_{i}.safetensors (circuit-tracer cross-layer transcoder)"
)
THRESHOLD_KEY = "activation_function.threshold"
_LAYER_FILE = re.compile(r"^layer_(\d+)\.safetensors$")
_MAX_CFG_BYTES = 1 << 20  # a config.yaml is a few lines; refuse to parse megabytes
# Not circuit-tracer's: it stores no k, so TopK sets carry these keys (it ignores them).
_TOPK_KEYS = ("saedoctor_activation", "saedoctor_topk_k")
# The ReplacementMLP hooks circuit-tracer wraps around every block's MLP: valid for every
# architecture it traces.
DEFAULT_HOOKS = ("mlp.hook_in", "mlp.hook_out")
SET_KIND, CLT_KIND = "transcoder_set", "cross_layer_transcoder"
_ENC_FILE = re.compile(r"^W_enc_(\d+)\.safetensors$")
_DEC_FILE = re.compile(r"^W_dec_(\d+)\.safetensors$")
# A CLT's layers share their decoders, so reading one layer alone would misstate every
# reconstruction above layer 0.
CLT_REFUSAL = ("{path}: cross-layer transcoders are not supported yet by load_sae / "
               "load_dictionaries (one dictionary per layer): load it with load_clt, or run "
               "`saedoctor diagnose --sae {path}`, which diagnoses every layer of it")  # fmt: skip


def detect(path: Path) -> bool:
    if not (path.is_dir() and (path / CFG_FILE).is_file()):
        return False
    try:
        with open(path / CFG_FILE, "rb") as f:
            return b"model_kind" in f.read(_MAX_CFG_BYTES)
    except OSError:
        return False


# -- reading ------------------------------------------------------------------------------
def load(path: Path) -> RawSAE:
    """A set of one layer; bigger sets go through `load_set` (see loaders.load_dictionaries)."""
    raws = load_set(path, None)
    if len(raws) != 1:
        raise InputError(
            f"{path}: holds {len(raws)} per-layer transcoders; pick one with --layer "
            "(layer= in Python) or load them all with load_dictionaries"
        )
    return raws[0]


def load_set(path: Path, layer: int | None) -> list[RawSAE]:
    """Every layer's transcoder (or only `layer`'s), in layer order."""
    cfg = read_config(path / CFG_FILE)
    if cfg["model_kind"] == CLT_KIND:
        raise InputError(CLT_REFUSAL.format(path=path))
    hooks = _hooks(cfg, path / CFG_FILE)
    files = layer_files(path, cfg)
    if layer is None:
        return [_read_layer(f, i, cfg, hooks) for i, f in enumerate(files)]
    if not 0 <= layer < len(files):
        raise InputError(
            f"{path}: transcoder set has layers 0-{len(files) - 1}; layer {layer} is not one"
        )
    return [_read_layer(files[layer], layer, cfg, hooks)]


def _yaml(source: Path) -> Any:
    # PyYAML comes with huggingface_hub / transformers; say so if an install lacks it.
    try:
        import yaml
    except ImportError as e:
        raise InputError(f"{source}: circuit-tracer sets need PyYAML (pip install pyyaml)") from e
    return yaml


def read_config(file: Path) -> dict[str, Any]:
    """`config.yaml` through yaml.safe_load (plain data only, never objects)."""
    yaml = _yaml(file)
    try:
        if file.stat().st_size > _MAX_CFG_BYTES:
            raise InputError(f"{file}: {file.stat().st_size} bytes; expected a small YAML config")
        cfg = yaml.safe_load(file.read_text(encoding="utf-8"))
    except InputError:
        raise
    except (OSError, ValueError, RecursionError, yaml.YAMLError) as e:
        raise InputError(f"{file}: invalid YAML config ({brief(e)})") from e
    if not isinstance(cfg, dict):
        raise InputError(f"{file}: expected a YAML mapping, found {type(cfg).__name__}")
    kind = cfg.get("model_kind")
    if kind not in (SET_KIND, CLT_KIND):
        raise InputError(f"{file}: model_kind {kind!r} is not supported; expected "
                         f"'{SET_KIND}' or '{CLT_KIND}'")  # fmt: skip
    return cfg


def _hooks(cfg: dict[str, Any], file: Path) -> tuple[str, str]:
    """The two hook names, checked to be an MLP input and an MLP output."""
    out = []
    for key, role in (("feature_input_hook", "input"), ("feature_output_hook", "output")):
        hook = cfg.get(key)
        site = parse_hook_name(f"blocks.0.{hook}") if isinstance(hook, str) else None
        if site is None or not is_transcoder_site(site.kind, role):
            want = (
                "ln2.hook_normalized or mlp.hook_in"
                if role == "input"
                else ("hook_mlp_out or mlp.hook_out")
            )
            raise InputError(
                f"{file}: {key} {hook!r} is not a hook saedoctor reads; expected {want}"
            )
        out.append(hook)
    return out[0], out[1]


def layer_files(path: Path, cfg: dict[str, Any]) -> list[Path]:
    """Layer i's file at index i; a missing file or a gap in the numbering is an error."""
    if "transcoders" in cfg:
        return _listed_files(path, cfg["transcoders"])
    found: dict[int, Path] = {}
    for f in path.iterdir():
        if m := _LAYER_FILE.match(f.name):
            found[int(m.group(1))] = f
    if not found:
        raise InputError(f"{path}: no layer_{{i}}.safetensors files beside {CFG_FILE}")
    for i in range(max(found) + 1):
        if i not in found:
            raise InputError(
                f"{path}: layer file layer_{i}.safetensors is missing; circuit-tracer needs "
                f"layers 0-{max(found)} with no gap"
            )
    return [found[i] for i in range(len(found))]


def _listed_files(path: Path, entries: Any) -> list[Path]:
    source = path / CFG_FILE
    if not isinstance(entries, list) or not entries:
        raise InputError(f"{source}: transcoders must be a non-empty list of files")
    files = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, str):
            raise InputError(f"{source}: transcoders[{i}] is {entry!r}; expected a file path")
        if entry.startswith("hf://"):
            raise InputError(
                f"{source}: transcoders[{i}] {entry} is on the Hugging Face hub; download the "
                "files and list local paths (saedoctor does not fetch them)"
            )
        file = Path(entry) if Path(entry).is_absolute() else path / entry
        if not file.is_file():
            raise InputError(f"{source}: transcoders[{i}] names {file}, which does not exist")
        files.append(file)
    return files


def _read_layer(file: Path, layer: int, cfg: dict[str, Any], hooks: tuple[str, str]) -> RawSAE:
    tensors = _npz_layer(file) if file.suffix == ".npz" else _safetensors_layer(file)
    d_in, d_sae = tensors["W_enc"].shape
    arch, k = _activation(tensors, cfg, file)
    in_site, out_site = (parse_hook_name(f"blocks.{layer}.{h}") for h in hooks)
    return RawSAE(
        architecture=arch,
        d_in=d_in,
        d_sae=d_sae,
        d_out=tensors["W_dec"].shape[1],
        tensors=tensors,
        k=k,
        apply_b_dec_to_input=False,
        site=in_site,
        output_site=out_site,
        transcoder=True,
        model_name=cfg.get("model_name") if isinstance(cfg.get("model_name"), str) else None,
        metadata={
            "feature_input_hook": hooks[0],
            "feature_output_hook": hooks[1],
            "layer_file": str(file),
            "circuit_tracer_config": _scalars(cfg),
        },
    )


def _scalars(cfg: dict[str, Any]) -> dict[str, Any]:
    """The config's plain values: YAML aliases can nest a small file into an exponentially
    large structure, which copying it whole into the metadata would expand."""
    plain = (str, int, float, bool, type(None))
    return json_safe({str(k): v for k, v in cfg.items() if isinstance(v, plain)})


def _npz_layer(file: Path) -> dict[str, torch.Tensor]:
    """A Gemma Scope params.npz listed in `transcoders:` (circuit-tracer reads it the same way,
    transposing its `[d_in, d_t]` encoder into its own layout)."""
    return gemma_scope.read_params(file)


def _safetensors_layer(file: Path) -> dict[str, torch.Tensor]:
    raw = read_safetensors(file)
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        if name not in raw:
            found = ", ".join(sorted(raw)) or "none"
            raise InputError(f"{file}: missing transcoder tensor {name} (found: {found})")
    _check_shapes(raw, file)
    out = {
        "W_enc": transposed(raw["W_enc"], "W_enc", file),
        "W_dec": raw["W_dec"],
        "b_enc": raw["b_enc"],
        "b_dec": raw["b_dec"],
    }
    if THRESHOLD_KEY in raw:
        out["threshold"] = raw[THRESHOLD_KEY]
    if "W_skip" in raw:
        out["W_skip"] = transposed(raw["W_skip"], "W_skip", file)  # stored [d_out, d_in]
    return out


def _check_shapes(raw: dict[str, torch.Tensor], file: Path) -> None:
    """Encoder and decoder must agree with each other (the file has no config to check)."""
    w_enc, w_dec = raw["W_enc"], raw["W_dec"]
    if w_enc.ndim != 2 or w_dec.ndim != 2:
        raise InputError(
            f"{file}: W_enc {tuple(w_enc.shape)} and W_dec {tuple(w_dec.shape)}: expected 2-D"
        )
    d_sae, d_in = w_enc.shape
    d_out = w_dec.shape[1]
    expected = {"W_dec": (d_sae, d_out), "b_enc": (d_sae,), "b_dec": (d_out,),
                THRESHOLD_KEY: (d_sae,), "W_skip": (d_out, d_in)}  # fmt: skip
    for name, shape in expected.items():
        if name in raw and tuple(raw[name].shape) != shape:
            raise InputError(
                f"{file}: tensor {name} has shape {tuple(raw[name].shape)}, expected {shape} "
                f"(W_enc is [d_transcoder={d_sae}, d_in={d_in}])"
            )


def _activation(
    tensors: dict[str, torch.Tensor], cfg: dict[str, Any], file: Path
) -> tuple[str, int | None]:
    if cfg.get(_TOPK_KEYS[0]) == "topk":
        return "topk", as_int(cfg.get(_TOPK_KEYS[1]), _TOPK_KEYS[1], file.parent / CFG_FILE)
    threshold = tensors.get("threshold")
    if threshold is None:
        return "relu", None
    if (threshold < 0).any():
        # circuit-tracer keeps pre-activations in (threshold, 0]; saedoctor's JumpReLU
        # rectifies them, so the two would silently differ.
        raise InputError(
            f"{file}: {int((threshold < 0).sum())} negative JumpReLU thresholds; expected "
            "thresholds >= 0 (circuit-tracer would pass negative activations through)"
        )
    return "jumprelu", None


# -- cross-layer transcoders -------------------------------------------------------------
def is_clt(path: Path) -> bool:
    """Whether `path` is a circuit-tracer folder of `model_kind: cross_layer_transcoder`."""
    return detect(path) and read_config(path / CFG_FILE)["model_kind"] == CLT_KIND


def load_clt(path: Path) -> CrossLayerTranscoder:
    """A CLT folder, float32, on CPU; each W_dec_i stays on disk, read one slice at a time."""
    import dataclasses

    from saedoctor.sae.clt import SafetensorsDecoderSource, from_circuit_tracer

    cfg = read_config(path / CFG_FILE)
    if cfg["model_kind"] != CLT_KIND:
        raise InputError(
            f"{path / CFG_FILE}: model_kind {cfg['model_kind']!r}; expected "
            f"'{CLT_KIND}' (a transcoder set loads with load_dictionaries)"
        )
    hooks = _hooks(cfg, path / CFG_FILE)
    enc_files, dec_files = _clt_files(path)
    decoder = SafetensorsDecoderSource(dec_files, dtype=torch.float32)  # headers only
    tensors: dict[str, torch.Tensor] = {}
    for i, file in enumerate(enc_files):
        tensors |= _clt_encoder(file, i, (decoder.d_transcoder, decoder.d_model), dec_files[i])
    model_name = cfg.get("model_name") if isinstance(cfg.get("model_name"), str) else None
    meta = {"feature_input_hook": hooks[0], "feature_output_hook": hooks[1],
            "source_format": "circuit_tracer", "source_path": str(path),
            "circuit_tracer_config": _scalars(cfg)}  # fmt: skip
    clt = from_circuit_tracer(tensors, decoder, source=str(path), model_name=model_name,
                              metadata=meta)  # fmt: skip
    for i, enc in enumerate(clt.encoders):  # the config's hooks, e.g. ln2.hook_normalized
        in_site, out_site = (parse_hook_name(f"blocks.{i}.{h}") for h in hooks)
        enc.cfg = dataclasses.replace(enc.cfg, site=in_site, output_site=out_site)
    return clt


def _clt_files(path: Path) -> tuple[list[Path], list[Path]]:
    """(W_enc_i files, W_dec_i files), i = 0..n-1: no gap, one decoder per encoder."""
    enc = _numbered(path, _ENC_FILE, "W_enc")
    dec = _numbered(path, _DEC_FILE, "W_dec")
    for i in range(max(len(enc), len(dec))):
        if i >= len(dec):
            raise InputError(f"{path / f'W_dec_{i}.safetensors'}: decoder file is missing "
                             f"(W_enc_{i}.safetensors has no decoder)")  # fmt: skip
        if i >= len(enc):
            raise InputError(f"{path / f'W_enc_{i}.safetensors'}: encoder file is missing "
                             f"(W_dec_{i}.safetensors has no encoder)")  # fmt: skip
    return enc, dec


def _numbered(path: Path, pattern: re.Pattern[str], stem: str) -> list[Path]:
    found = {int(m.group(1)): f for f in path.iterdir() if (m := pattern.match(f.name))}
    if not found and stem == "W_enc":
        raise InputError(f"{path}: no W_enc_{{i}}.safetensors files beside {CFG_FILE}")
    for i in range(max(found, default=-1) + 1):
        if i not in found:
            raise InputError(
                f"{path / f'{stem}_{i}.safetensors'}: file is missing; a cross-layer "
                f"transcoder needs layers 0-{max(found)} with no gap"
            )
    return [found[i] for i in range(len(found))]


def _clt_encoder(file: Path, i: int, dims: tuple[int, int],
                 dec_file: Path) -> dict[str, torch.Tensor]:  # fmt: skip
    """Layer i's encoder tensors, float32, checked against the decoder's [d_t, d_model]."""
    raw = read_safetensors(file)  # validated header: no allocation from a lying shape
    d_t, d_model = dims
    expected = {f"W_enc_{i}": (d_t, d_model), f"b_enc_{i}": (d_t,), f"b_dec_{i}": (d_model,),
                f"threshold_{i}": (d_t,)}  # fmt: skip
    out = {}
    for name, shape in expected.items():
        t = raw.get(name)
        if t is None and not name.startswith("threshold"):
            found = ", ".join(sorted(raw)) or "none"
            raise InputError(f"{file}: missing tensor {name} (found: {found})")
        if t is not None and tuple(t.shape) != shape:
            raise InputError(
                f"{file}: {name} has shape {tuple(t.shape)}, expected {shape} from "
                f"{dec_file.name} [d_transcoder={d_t}, *, d_model={d_model}]"
            )
        if t is not None:
            out[name] = t.to(torch.float32)
    return out


# -- writing ------------------------------------------------------------------------------
def save(dicts: list[Dictionary], directory: str | Path) -> Path:
    """Write `dicts` (one per-layer transcoder per block, layers 0..n-1) as a transcoder set.

    Everything is checked and written into a temporary folder first: a failed save leaves
    the target as it was."""
    directory = Path(directory)
    ordered = _checked_for_saving(dicts, directory)
    files = {f"layer_{i}.safetensors": _layer_tensors(d) for i, d in enumerate(ordered)}
    return _write_folder(directory, files, _config(ordered, SET_KIND))


def save_clt(clt: CrossLayerTranscoder, directory: str | Path) -> Path:
    """Write a CLT in circuit-tracer's layout: `W_enc_{i}.safetensors` (`W_enc_{i}`,
    `b_enc_{i}`, `b_dec_{i}`, `threshold_{i}` for JumpReLU) and `W_dec_{i}.safetensors`
    (`W_dec_{i} [d_t, n - i, d_model]`, gathered one slice at a time), written atomically."""
    directory = Path(directory)
    files: dict[str, dict[str, torch.Tensor]] = {}
    for i, enc in enumerate(clt.encoders):
        _check_savable(enc, directory)
        layer = _layer_tensors(enc)
        files[f"W_enc_{i}.safetensors"] = {
            f"W_enc_{i}": layer["W_enc"], f"b_enc_{i}": layer["b_enc"],
            f"b_dec_{i}": layer["b_dec"],
            **({f"threshold_{i}": layer[THRESHOLD_KEY]} if THRESHOLD_KEY in layer else {}),
        }  # fmt: skip
    for i in range(clt.n_layers):
        slices = [clt.decoder.decoder_slice(i, t).detach().cpu() for t in range(i, clt.n_layers)]
        files[f"W_dec_{i}.safetensors"] = {f"W_dec_{i}": torch.stack(slices, 1).contiguous()}
    return _write_folder(directory, files, _config(clt.encoders, CLT_KIND))


def _write_folder(directory: Path, files: dict[str, dict[str, torch.Tensor]],
                  config: dict[str, Any]) -> Path:  # fmt: skip
    """`files` and `config.yaml` into a temporary folder, then swapped in whole."""
    _check_target(directory)
    text = _yaml(directory).safe_dump(config, sort_keys=False)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        _write_into(tmp, files, text)
        _swap_in(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _checked_for_saving(dicts: list[Dictionary], directory: Path) -> list[Dictionary]:
    if not dicts:
        raise InputError(f"{directory}: no transcoders to save")
    for d in dicts:
        _check_savable(d, directory)
    ordered = sorted(dicts, key=lambda d: d.site.layer)  # type: ignore[union-attr]
    layers = [d.site.layer for d in ordered]  # type: ignore[union-attr]
    if layers != list(range(len(ordered))):
        raise InputError(
            f"{directory}: transcoders for layers {layers}; circuit-tracer needs exactly one "
            "per layer 0..n-1 with no gap"
        )
    return ordered


def _check_savable(d: Dictionary, directory: Path) -> None:
    site, out = d.site, d.output_site
    if (
        site is None
        or out is None
        or not is_transcoder_site(site.kind, "input")
        or (not is_transcoder_site(out.kind, "output") or out.layer != site.layer)
    ):
        raise InputError(
            f"{directory}: a dictionary reading {site} and writing {out} is not a per-layer "
            "transcoder (mlp_in -> mlp_out at one block); circuit-tracer cannot use it"
        )
    arch = d.cfg.architecture
    if d.threshold is None and arch != "relu":
        raise InputError(
            f"{directory}: layer {site.layer} is {arch} without thresholds; circuit-tracer "
            "stores ReLU or JumpReLU transcoders only (it has no k), so it would load this "
            "as ReLU"
        )


def _layer_tensors(d: Dictionary) -> dict[str, torch.Tensor]:
    w = {k: v.detach().cpu() for k, v in d.weights().items()}
    b_enc = w["b_enc"]
    if d.cfg.apply_b_dec_to_input:
        # circuit-tracer never subtracts b_dec from the input: fold it into the encoder bias,
        # (x - b_dec) @ W_enc + b_enc = x @ W_enc + (b_enc - b_dec @ W_enc).
        b_enc = b_enc - w["b_dec"] @ w["W_enc"]
    out = {
        "W_enc": w["W_enc"].T.contiguous(),
        "W_dec": w["W_dec"].contiguous(),
        "b_enc": b_enc.contiguous(),
        "b_dec": w["b_dec"].contiguous(),
    }
    if d.threshold is not None:
        # relu(pre) * (pre > θ) equals circuit-tracer's pre * (pre > max(θ, 0)) exactly.
        out[THRESHOLD_KEY] = w["threshold"].clamp(min=0).contiguous()
    if d.W_skip is not None:
        out["W_skip"] = w["W_skip"].T.contiguous()  # circuit-tracer applies x @ W_skip.T
    return out


def _config(ordered: list[Dictionary], kind: str) -> dict[str, Any]:
    meta = ordered[0].cfg.metadata
    hooks = (meta.get("feature_input_hook"), meta.get("feature_output_hook"))
    if not all(isinstance(h, str) for h in hooks):
        hooks = DEFAULT_HOOKS
    cfg: dict[str, Any] = {
        "model_kind": kind,
        "feature_input_hook": hooks[0],
        "feature_output_hook": hooks[1],
    }
    if ordered[0].cfg.model_name:
        cfg["model_name"] = ordered[0].cfg.model_name
    return cfg


def _owned(directory: Path) -> bool:
    """Whether every entry is a file a transcoder set or CLT consists of (safe to replace)."""
    patterns = (_LAYER_FILE, _ENC_FILE, _DEC_FILE)
    return all(p.name == CFG_FILE or any(r.match(p.name) for r in patterns)
               for p in directory.iterdir())  # fmt: skip


def _check_target(directory: Path) -> None:
    if directory.exists() and not directory.is_dir():
        raise InputError(f"{directory}: exists and is not a directory; expected a directory")
    if directory.is_dir() and not _owned(directory):
        raise InputError(
            f"{directory}: holds files other than a transcoder set; expected a new or empty "
            "directory (circuit-tracer reads every layer_*.safetensors / W_*_i.safetensors "
            "there)"
        )


def _write_into(tmp: Path, files: dict[str, dict[str, torch.Tensor]], config: str) -> None:
    from safetensors.torch import save_file

    for name, tensors in files.items():
        save_file(tensors, str(tmp / name))
    # Last, as circuit-tracer does: a config.yaml means the set is complete.
    (tmp / CFG_FILE).write_text(config, encoding="utf-8")


def _swap_in(tmp: Path, directory: Path) -> None:
    """Whole-folder renames: the old set's extra layer files must not survive beside the new."""
    if not directory.exists() or not any(directory.iterdir()):
        os.replace(tmp, directory)  # rename onto a missing or empty folder is atomic
        return
    old = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:12]}"
    os.replace(directory, old)
    try:
        os.replace(tmp, directory)
    except OSError:
        os.replace(old, directory)
        raise
    shutil.rmtree(old, ignore_errors=True)


__all__ = ["CFG_FILE", "CLT_KIND", "EXPECTS", "detect", "is_clt", "layer_files", "load",
           "load_clt", "load_set", "read_config", "save", "save_clt"]  # fmt: skip
