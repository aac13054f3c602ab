"""Gemma Scope (google/gemma-scope-*): one `params.npz` per dictionary.

Arrays `W_enc [d_in, d_sae]`, `W_dec [d_sae, d_out]`, `b_enc [d_sae]`, `b_dec [d_out]`,
`threshold [d_sae]`. JumpReLU with no decoder-bias subtraction (Gemma Scope tutorial):
`pre = x @ W_enc + b_enc`, `f = relu(pre) * (pre > threshold)`, `out = f @ W_dec + b_dec`.
SAEs live in `gemma-scope-*-res|mlp|att` repositories and transcoders (MLP input → MLP
output) in `gemma-scope-*-transcoders`, at `layer_L/width_W/average_l0_N/params.npz`; the file
itself says neither, so the site comes from that path or from --layer/--site.
"""

from __future__ import annotations

import math
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saedoctor.errors import InputError
from saedoctor.sae.formats.base import RawSAE, brief, checked_tensors
from saedoctor.sae.site import Site

PARAMS_FILE = "params.npz"
EXPECTS = f"{PARAMS_FILE} (or any .npz) with W_enc, W_dec, b_enc, b_dec, threshold (Gemma Scope)"
NAMES = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")

# Repository names say what the dictionaries read: `gemma-scope-2b-pt-res`,
# `...-mlp-canonical`, `...-transcoders` (also inside HF cache folder names).
_REPO = re.compile(r"gemma-scope-[\w.-]*?-(res|mlp|att|transcoders)(?:-canonical)?(?:[/\\]|$)")
_LAYER = re.compile(r"(?:^|[/\\])layer_(\d+)(?:[/\\]|$)")
_SAE_KINDS = {"res": "resid_post", "mlp": "mlp_out", "att": "attn_out"}
# A deflated member may expand at most this much relative to the whole archive: far above
# what float weights compress to, far below what a zip bomb needs.
_MAX_EXPANSION = 64


def detect(path: Path) -> bool:
    if path.is_file():
        return path.suffix == ".npz"
    return path.is_dir() and (path / PARAMS_FILE).is_file()


def load(path: Path) -> RawSAE:
    file = path / PARAMS_FILE if path.is_dir() else path
    tensors = read_params(file)
    d_in, d_sae = tensors["W_enc"].shape
    site, output_site, transcoder = sites_from_path(file)
    return RawSAE(
        architecture="jumprelu",
        d_in=d_in,
        d_sae=d_sae,
        d_out=tensors["W_dec"].shape[1],
        tensors=tensors,
        apply_b_dec_to_input=False,
        site=site,
        output_site=output_site,
        transcoder=transcoder,
        metadata={"site_from": "Gemma Scope path"} if site else {},
    )


def sites_from_path(file: Path) -> tuple[Site | None, Site | None, bool | None]:
    """(input site, output site, is a transcoder) from a Gemma Scope repository path.

    `absolute()`, not `resolve()`: HF cache files are symlinks to content-named blobs."""
    text = str(file.absolute())
    repo, layer = _REPO.search(text), _LAYER.search(text)
    if repo is None:
        return None, None, None
    if repo.group(1) == "transcoders":
        if layer is None:
            return None, None, True
        n = int(layer.group(1))
        return Site(n, "mlp_in"), Site(n, "mlp_out"), True
    site = Site(int(layer.group(1)), _SAE_KINDS[repo.group(1)]) if layer else None
    return site, None, False


def read_params(file: Path) -> dict[str, torch.Tensor]:
    """The five arrays as torch tensors, their headers checked before any data is read."""
    headers = _headers(file)
    missing = [n for n in NAMES if n not in headers]
    if missing:
        found = ", ".join(sorted(headers)) or "none"
        raise InputError(
            f"{file}: missing Gemma Scope array(s) {', '.join(missing)} (found: {found})"
        )
    _check_shapes({n: headers[n][0] for n in NAMES}, file)
    try:
        with np.load(file, allow_pickle=False) as npz:
            arrays = {n: _native(npz[n]) for n in NAMES}
    except Exception as e:  # zlib, CRC and truncation errors all mean the same to the user
        raise InputError(f"{file}: corrupt or truncated .npz file ({brief(e)})") from e
    return checked_tensors({n: torch.from_numpy(a) for n, a in arrays.items()}, file)


def _native(a: np.ndarray) -> np.ndarray:
    # torch cannot wrap big-endian arrays.
    return np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("="))


def _headers(file: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """`{name: (shape, dtype)}` from each member's .npy header, refusing sizes the member
    cannot hold: numpy allocates the declared array before reading its data."""
    try:
        archive_size = os.path.getsize(file)
        with zipfile.ZipFile(file) as zf:
            return {
                info.filename.removesuffix(".npy"): _header(zf, info, archive_size, file)
                for info in zf.infolist()
                if info.filename.endswith(".npy")
            }
    except InputError:
        raise
    except FileNotFoundError as e:
        raise InputError(f"{file}: file not found") from e
    except Exception as e:
        raise InputError(f"{file}: corrupt or not an .npz file ({brief(e)})") from e


def _header(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, archive_size: int, file: Path
) -> tuple[tuple[int, ...], np.dtype]:
    name = info.filename
    limit = archive_size if info.compress_type == zipfile.ZIP_STORED else (
        _MAX_EXPANSION * archive_size
    )
    if info.file_size > limit:
        raise InputError(
            f"{file}: array {name} declares {info.file_size} bytes, more than the archive "
            "can hold; expected a plain numpy .npz"
        )
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise InputError(
                f"{file}: array {name} uses .npy version {version}; expected 1.0 or 2.0"
            )
        offset = f.tell()
    if dtype.hasobject or dtype.kind != "f":
        raise InputError(f"{file}: array {name} has dtype {dtype}; expected floating point")
    if offset + math.prod(shape) * dtype.itemsize != info.file_size:
        raise InputError(
            f"{file}: array {name} header declares shape {shape} ({dtype}), which does not "
            f"match its {info.file_size} stored bytes"
        )
    return tuple(shape), dtype


def _check_shapes(shapes: dict[str, Any], file: Path) -> None:
    w_enc, w_dec = shapes["W_enc"], shapes["W_dec"]
    if len(w_enc) != 2 or len(w_dec) != 2:
        raise InputError(f"{file}: W_enc {w_enc} and W_dec {w_dec}: expected 2-D arrays")
    d_in, d_sae = w_enc
    d_out = w_dec[1]
    expected = {"W_dec": (d_sae, d_out), "b_enc": (d_sae,), "b_dec": (d_out,),
                "threshold": (d_sae,)}  # fmt: skip
    for name, shape in expected.items():
        if tuple(shapes[name]) != shape:
            raise InputError(
                f"{file}: array {name} has shape {tuple(shapes[name])}, expected {shape} "
                f"(W_enc is [d_in={d_in}, d_sae={d_sae}])"
            )
