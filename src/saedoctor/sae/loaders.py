"""Load SAEs of every supported format (SPEC §8) into `SAE`; save the native format.

Formats plug in through `register_loader(name, detect, load)`: `detect(path)` says whether a
file or folder is in that format, `load(path)` returns a `RawSAE` with SPEC §1 tensor names.
`load_sae` then applies the site / dtype / device choices shared by every format.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from saedoctor.errors import InputError
from saedoctor.sae.clt import CrossLayerTranscoder
from saedoctor.sae.formats import (
    circuit_tracer,
    dictionary_learning,
    gemma_scope,
    goodfire,
    native,
    sparsify,
)
from saedoctor.sae.formats.base import RawSAE
from saedoctor.sae.model import SAE, Dictionary, SAEConfig, build_sae
from saedoctor.sae.site import (
    SITE_KINDS,
    TRANSCODER_INPUT_KINDS,
    Site,
    is_transcoder_site,
    parse_hook_name,
)

LoadFn = Callable[[Path], RawSAE]
DetectFn = Callable[[Path], bool]
# Formats holding one dictionary per layer: `(path, layer or None) -> [RawSAE, ...]`.
SetLoadFn = Callable[[Path, "int | None"], list[RawSAE]]

LOADERS: dict[str, LoadFn] = {}
DETECTORS: dict[str, DetectFn] = {}
EXPECTED: dict[str, str] = {}
SET_LOADERS: dict[str, SetLoadFn] = {}

RELEASE_FORMAT = "saelens_release"
_RELEASE_ID = re.compile(r"^(?P<release>[A-Za-z0-9][\w.\-]*):(?P<sae_id>[^:/\\].*)$")
_DTYPES = ("float32", "float64", "bfloat16", "float16")


def register_loader(
    name: str,
    detect: DetectFn,
    load: LoadFn,
    *,
    expects: str | None = None,
    load_set: SetLoadFn | None = None,
) -> None:
    """Add (or replace) a format; `expects` describes its files for error messages;
    `load_set` reads formats that hold one dictionary per layer."""
    LOADERS[name] = load
    DETECTORS[name] = detect
    EXPECTED[name] = expects or name
    SET_LOADERS.pop(name, None)
    if load_set is not None:
        SET_LOADERS[name] = load_set


# Order matters: the first format whose `detect` accepts a path reads it.
for _module, _name in (
    (native, "native"),
    (sparsify, "sparsify"),
    (dictionary_learning, "dictionary_learning"),
    (circuit_tracer, "circuit_tracer"),
    (gemma_scope, "gemma_scope"),
    (goodfire, "goodfire"),
):
    register_loader(
        _name, _module.detect, _module.load, expects=_module.EXPECTS,
        load_set=getattr(_module, "load_set", None),
    )


def save_sae(sae: SAE, directory: str | Path) -> Path:
    """Write `sae` as `cfg.json` + `sae_weights.safetensors` (SAELens 6 layout), atomically."""
    return native.save(sae, directory)


def save_circuit_tracer(dicts: list[Dictionary], directory: str | Path) -> Path:
    """Write per-layer transcoders as a circuit-tracer transcoder set (`config.yaml` +
    `layer_{i}.safetensors`), atomically, so circuit-tracer can trace with them."""
    return circuit_tracer.save(dicts, directory)


def save_clt(clt: CrossLayerTranscoder, directory: str | Path) -> Path:
    """Write a cross-layer transcoder in circuit-tracer's layout (`config.yaml`,
    `W_enc_{i}.safetensors`, `W_dec_{i}.safetensors`), atomically; `load_clt` reads it."""
    return circuit_tracer.save_clt(clt, directory)


def load_clt(path: str | Path, *, device: str = "cpu") -> CrossLayerTranscoder:
    """A circuit-tracer cross-layer transcoder folder (`model_kind: cross_layer_transcoder`):
    float32 encoders on `device`; the decoders stay memory-mapped on disk, one slice read at a
    time. `load_sae` / `load_dictionaries` refuse a CLT (one layer alone misstates it)."""
    target = Path(path)
    if not target.exists():
        raise InputError(f"{target}: no such file or directory; expected "
                         f"{circuit_tracer.EXPECTS_CLT}")  # fmt: skip
    if target.is_file() and circuit_tracer.detect(target.parent):
        target = target.parent  # config.yaml or a weights file stands for its folder
    if not circuit_tracer.detect(target):
        raise InputError(f"{target}: not a circuit-tracer folder; expected "
                         f"{circuit_tracer.EXPECTS_CLT}")  # fmt: skip
    clt = _guarded("circuit_tracer", target, lambda: circuit_tracer.load_clt(target))
    try:
        return clt.to(device)
    except (RuntimeError, ValueError, AssertionError) as e:
        raise InputError(f"device {device!r} for {target}: cannot place the CLT there ({e})") from e


def is_clt(path: str | Path) -> bool:
    """Whether `path` (a folder, or a file in it) is a circuit-tracer cross-layer transcoder."""
    p = Path(path)
    if p.is_file():
        p = p.parent
    return circuit_tracer.is_clt(p)


def detect_format(path: str | Path) -> str:
    """The format name of `path` (a registered format, or "saelens_release" for release:id)."""
    return _resolve(Path(path), str(path))[0]


def load_sae(
    path: str | Path,
    *,
    layer: int | None = None,
    site: str | None = None,
    device: str = "cpu",
    dtype: str | None = None,
    format: str | None = None,
) -> SAE:
    """Load an SAE from any supported format.

    `layer` / `site` (a kind like "mlp_out" or a hook name like "blocks.3.hook_mlp_out")
    override the config's site; without any layer, `cfg.site` stays None. `dtype` defaults to
    float32 (float64 when stored so): half-precision weights are widened, never rounded.
    """
    spec = str(path)
    fmt, target = _resolve(Path(path), spec) if format is None else _explicit(format, Path(path))
    if fmt == RELEASE_FORMAT:
        raw = _load_release(spec)
    elif fmt in SET_LOADERS:
        raw = _one_of_set(fmt, target, _wanted_layer(layer, site))
    else:
        raw = _read(fmt, target)
    source = spec if fmt == RELEASE_FORMAT else str(target)
    return _build(raw, fmt, source, layer=layer, site=site, device=device, dtype=dtype)


def load_dictionaries(
    path: str | Path,
    *,
    site: str | None = None,
    device: str = "cpu",
    dtype: str | None = None,
    format: str | None = None,
) -> list[Dictionary]:
    """Every dictionary a path holds: one per layer for a transcoder set (each sited at its
    layer, in layer order), a list of one for single-dictionary formats."""
    spec = str(path)
    fmt, target = _resolve(Path(path), spec) if format is None else _explicit(format, Path(path))
    if fmt not in SET_LOADERS:
        return [load_sae(path, site=site, device=device, dtype=dtype, format=format)]
    raws = _read_set(fmt, target, None)
    return [
        _build(raw, fmt, str(target), layer=None, site=_kind_only(site), device=device,
               dtype=dtype)
        for raw in raws
    ]


def _kind_only(site: str | None) -> str | None:
    """A set's dictionaries keep their own layers; only the kind of `site` applies."""
    parsed = parse_hook_name(site) if site is not None else None
    return parsed.kind if parsed is not None else site


def _wanted_layer(layer: int | None, site: str | None) -> int | None:
    if layer is not None or site is None:
        return layer
    parsed = parse_hook_name(site)
    return parsed.layer if parsed is not None else None


def _one_of_set(fmt: str, target: Path, layer: int | None) -> RawSAE:
    raws = _read_set(fmt, target, layer)
    if len(raws) == 1:
        return raws[0]
    layers = [r.site.layer for r in raws if r.site is not None]
    span = f"layers {min(layers)}-{max(layers)}" if layers else f"{len(raws)} layers"
    raise InputError(
        f"{target}: holds {len(raws)} per-layer transcoders ({span}); pick one with --layer "
        "(layer= in Python) or load them all with load_dictionaries"
    )


def _read_set(fmt: str, target: Path, layer: int | None) -> list[RawSAE]:
    return _guarded(fmt, target, lambda: SET_LOADERS[fmt](target, layer))


# -- finding the format -------------------------------------------------------------------
def _matching(path: Path) -> str | None:
    return next((name for name, detect in DETECTORS.items() if detect(path)), None)


def _resolve(path: Path, spec: str) -> tuple[str, Path]:
    if not path.exists():
        if _RELEASE_ID.match(spec):
            return RELEASE_FORMAT, path
        raise InputError(f"{path}: no such file or directory; expected an SAE file or folder")
    if fmt := _matching(path):
        return fmt, path
    # A file inside an SAE folder (cfg.json, ae.pt, ...) stands for its folder.
    if path.is_file() and (fmt := _matching(path.parent)):
        return fmt, path.parent
    if path.is_dir():
        subs = sorted(d for d in path.iterdir() if d.is_dir() and _matching(d))
        if len(subs) == 1:
            return _resolve(subs[0], str(subs[0]))
        if subs:
            names = ", ".join(d.name for d in subs)
            raise InputError(
                f"{path}: holds {len(subs)} SAEs ({names}); pass one of them, e.g. {subs[0]}"
            )
    raise InputError(f"{path}: unknown SAE format; expected {_expected_text()}")


def _explicit(fmt: str, path: Path) -> tuple[str, Path]:
    if fmt == RELEASE_FORMAT:
        if not _RELEASE_ID.match(str(path)):
            raise InputError(f"{path}: expected a SAELens release id like release:sae_id")
        return fmt, path
    if fmt not in LOADERS:
        names = ", ".join([*LOADERS, RELEASE_FORMAT])
        raise InputError(f"SAE format {fmt!r} for {path}: expected one of {names}")
    if not path.exists():
        raise InputError(f"{path}: no such file or directory; expected {EXPECTED[fmt]}")
    if not DETECTORS[fmt](path) and path.is_file() and DETECTORS[fmt](path.parent):
        path = path.parent
    if not DETECTORS[fmt](path):
        raise InputError(f"{path}: not a {fmt} SAE; expected {EXPECTED[fmt]}")
    return fmt, path


def _expected_text() -> str:
    return "; or ".join(EXPECTED.values()) + "; or a SAELens release id (release:sae_id)"


# -- reading ------------------------------------------------------------------------------
def _read(fmt: str, target: Path) -> RawSAE:
    return _guarded(fmt, target, lambda: LOADERS[fmt](target))


def _guarded(fmt: str, target: Path, read: Callable[[], Any]) -> Any:
    try:
        return read()
    except InputError as e:
        if str(target) in str(e):
            raise
        raise InputError(f"{target}: {e}") from e
    # A malformed file surfaces as whatever the format code tripped on; the user needs one
    # line naming the file, not a traceback.
    except (KeyError, ValueError, TypeError, IndexError, RuntimeError, OSError) as e:
        raise InputError(f"{target}: could not read {fmt} SAE ({type(e).__name__}: {e})") from e


def _load_release(spec: str) -> RawSAE:
    """A SAELens pretrained release id: SAELens downloads, we convert its config and weights."""
    m = _RELEASE_ID.match(spec)
    assert m is not None  # _resolve only routes matching ids here
    try:
        from sae_lens import SAE as SAELensSAE
    except ImportError as e:
        raise InputError(
            f"{spec}: no such path; SAELens release ids (release:sae_id) need sae-lens installed"
        ) from e
    release, sae_id = m.group("release"), m.group("sae_id")
    try:
        loaded = SAELensSAE.from_pretrained(release, sae_id, device="cpu")
    except Exception as e:  # network, unknown id, auth: all one line for the user
        raise InputError(f"{spec}: SAELens could not load release {release!r} ({e})") from e
    if isinstance(loaded, tuple):  # SAELens < 6 returned (sae, cfg, sparsity)
        loaded = loaded[0]
    state = {k: v.detach().cpu() for k, v in loaded.state_dict().items()}
    raw = native.from_saelens_dict(loaded.cfg.to_dict(), state, spec)
    raw.metadata.update(saelens_release=release, saelens_sae_id=sae_id)
    return raw


# -- building -----------------------------------------------------------------------------
def _parse_site(site: str) -> tuple[str, int | None]:
    """(kind, layer or None) of a `site` option: a kind or a hook name."""
    if parsed := parse_hook_name(site):
        return parsed.kind, parsed.layer
    if site in SITE_KINDS:
        return site, None
    raise InputError(
        f"site {site!r}: expected one of {', '.join(SITE_KINDS)} "
        "or a hook name like blocks.3.hook_resid_post"
    )


def _site(base: Site | None, layer: int | None, site: str | None) -> Site | None:
    kind, site_layer = _parse_site(site) if site is not None else (None, None)
    if layer is None:
        layer = site_layer if site_layer is not None else (base.layer if base else None)
    if layer is None:
        return None
    return Site(layer, kind or (base.kind if base else "resid_post"))


def _is_transcoder(raw: RawSAE, site: str | None) -> bool:
    """A file that cannot tell (bare Gemma Scope .npz) is a transcoder when asked to read
    a transcoder input site."""
    if raw.transcoder is None:
        return site is not None and _parse_site(site)[0] in TRANSCODER_INPUT_KINDS
    return raw.transcoder


def _transcoder_sites(
    raw: RawSAE, source: str, layer: int | None, site: str | None
) -> tuple[Site | None, Site | None]:
    """(input, output) sites of a transcoder: both move together to the chosen block."""
    kind, site_layer = _parse_site(site) if site is not None else (None, None)
    if kind is not None and not is_transcoder_site(kind, "input"):
        raise InputError(
            f"{source}: is a transcoder (reads mlp_in, writes mlp_out); --site {site} is not "
            f"a transcoder input; expected {' or '.join(TRANSCODER_INPUT_KINDS)} or a hook "
            "name like blocks.3.ln2.hook_normalized"
        )
    base_in, base_out = raw.site, raw.output_site
    if layer is None:
        layer = site_layer if site_layer is not None else (base_in.layer if base_in else None)
    if layer is None:
        return None, None
    out_kind = base_out.kind if base_out else "mlp_out"
    return Site(layer, kind or (base_in.kind if base_in else "mlp_in")), Site(layer, out_kind)


def _dtype(dtype: str | None, tensors: dict[str, torch.Tensor]) -> str:
    if dtype is not None:
        name = str(dtype).removeprefix("torch.")
        if name not in _DTYPES:
            raise InputError(f"dtype {dtype!r}: expected one of {', '.join(_DTYPES)}")
        return name
    # Metrics need at least float32; float64 weights were stored so on purpose.
    stored = {t.dtype for t in tensors.values() if t.is_floating_point()}
    return "float64" if torch.float64 in stored else "float32"


def _build(
    raw: RawSAE, fmt: str, source: str, *, layer: int | None, site: str | None, device: str,
    dtype: str | None,
) -> SAE:
    metadata = {**raw.metadata, "source_format": fmt, "source_path": source}
    try:
        if _is_transcoder(raw, site):
            in_site, out_site = _transcoder_sites(raw, source, layer, site)
        else:
            in_site, out_site = _site(raw.site, layer, site), None
        cfg = SAEConfig(
            architecture=raw.architecture,
            d_in=raw.d_in,
            d_sae=raw.d_sae,
            k=raw.k,
            apply_b_dec_to_input=raw.apply_b_dec_to_input,
            site=in_site,
            model_name=raw.model_name,
            dtype=_dtype(dtype, raw.tensors),
            metadata=metadata,
            output_site=out_site,
            d_out=raw.d_out,
            skip="W_skip" in raw.tensors,
        )
        _check_core_shapes(raw, source)
        sae = build_sae(cfg, raw.tensors, source)
    except InputError as e:
        if source in str(e):
            raise
        raise InputError(f"{source}: {e}") from e
    try:
        return sae.to(device)
    except (RuntimeError, ValueError, AssertionError) as e:
        raise InputError(f"device {device!r} for {source}: cannot place the SAE there ({e})") from e


def _check_core_shapes(raw: RawSAE, source: str) -> None:
    """The stored tensors must match the config before `build_sae` allocates from it: a config
    claiming d_sae = 10**9 beside a small file would otherwise allocate gigabytes first."""
    d_out = raw.d_target
    expected = {
        "W_enc": (raw.d_in, raw.d_sae),
        "W_dec": (raw.d_sae, d_out),
        "b_enc": (raw.d_sae,),
        "b_dec": (d_out,),
    }
    if "W_skip" in raw.tensors:
        expected["W_skip"] = (raw.d_in, d_out)
    for name, shape in expected.items():
        t = raw.tensors.get(name)
        if t is None:
            found = ", ".join(sorted(raw.tensors)) or "none"
            raise InputError(f"{source}: missing SAE tensor {name} (found: {found})")
        if tuple(t.shape) != shape:
            raise InputError(
                f"{source}: tensor {name} has shape {tuple(t.shape)}, expected {shape} "
                f"from the config (d_in={raw.d_in}, d_sae={raw.d_sae}, d_out={d_out})"
            )
