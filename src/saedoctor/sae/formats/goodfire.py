"""Goodfire's released SAEs: a bare `.pth`/`.pt` state dict of two nn.Linear layers.

`encode(x) = relu(encoder_linear(x))`, `decode(f) = decoder_linear(f)`: no decoder-bias
subtraction before encoding. The file carries no config, so the site needs `--layer` unless
the file keeps Goodfire's release name (`...-SAE-l19.pth` means block 19 resid_post).
"""

from __future__ import annotations

import re
from pathlib import Path

from saedoctor.sae.formats.base import RawSAE, need, read_torch_state_dict, transposed
from saedoctor.sae.site import Site

EXPECTS = "a .pt/.pth state dict with encoder_linear.* and decoder_linear.* (Goodfire)"
SUFFIXES = (".pt", ".pth")
_RELEASE_NAME = re.compile(r"^(?P<model>.+)-SAE-l(?P<layer>\d+)$")


def detect(path: Path) -> bool:
    if not (path.is_file() and path.suffix in SUFFIXES):
        return False
    # dictionary_learning also pickles state dicts, as `ae.pt` beside a config.json.
    return not (path.name == "ae.pt" and (path.parent / "config.json").is_file())


def load(path: Path) -> RawSAE:
    raw = read_torch_state_dict(path)
    enc = need(raw, ("encoder_linear.weight",), path)
    dec = need(raw, ("decoder_linear.weight",), path)
    tensors = {
        "W_enc": transposed(enc, "encoder_linear.weight", path),
        "b_enc": need(raw, ("encoder_linear.bias",), path),
        "W_dec": transposed(dec, "decoder_linear.weight", path),
        "b_dec": need(raw, ("decoder_linear.bias",), path),
    }
    d_sae, d_in = enc.shape
    site, metadata = None, {}
    if m := _RELEASE_NAME.match(path.stem):
        site = Site(int(m.group("layer")))
        # Not an HF id (the org is missing), so a hint rather than model_name.
        metadata.update(site_from="Goodfire release file name", model_hint=m.group("model"))
    return RawSAE(
        architecture="relu",
        d_in=d_in,
        d_sae=d_sae,
        tensors=tensors,
        apply_b_dec_to_input=False,
        site=site,
        metadata=metadata,
    )
