"""The SAEs under test: loading them, their metric suites, checking them against the model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from saedoctor import defaults
from saedoctor.diagnose.options import DiagnoseOptions
from saedoctor.errors import InputError
from saedoctor.metrics.downstream import Downstream
from saedoctor.metrics.suite import MetricSuite
from saedoctor.sae.codes import Codes
from saedoctor.sae.model import SAE


@dataclass
class SAEUnderTest:
    name: str
    path: str
    sae: SAE
    suite: MetricSuite
    downstream: Downstream = field(default_factory=lambda: Downstream())


# A sink receives, per SAE and batch: the unit, x, x̂, codes and the batch's sequence ids.
Sink = Callable[[SAEUnderTest, torch.Tensor, torch.Tensor, Codes, torch.Tensor], None]


def load_saes(opts: DiagnoseOptions) -> list[SAEUnderTest]:
    from saedoctor.sae.loaders import load_sae

    units = []
    for path in opts.saes:
        sae = load_sae(path, layer=opts.layer, site=opts.site, device=opts.device)
        if sae.site is None and opts.activations is None:
            raise InputError(f"{path}: the SAE's config names no layer; pass --layer (and --site)")
        units.append(SAEUnderTest(_unit_name(sae, path), str(path), sae, new_suite(sae, opts)))
    names = [u.name for u in units]
    for i, unit in enumerate(units):
        if names.count(unit.name) > 1:
            unit.name = f"{unit.name}#{i}"
    return units


def _unit_name(sae: SAE, path: str) -> str:
    site = sae.site.hook_name if sae.site else "unsited"
    return f"{Path(path).name}:{site}"


def new_suite(sae: SAE, opts: DiagnoseOptions) -> MetricSuite:
    return MetricSuite(sae.cfg.d_in, sae.cfg.d_sae, always_on_threshold=opts.always_on_threshold)


def suite_sink(unit: SAEUnderTest, x, x_hat, codes, seq_ids) -> None:
    unit.suite.update(x, x_hat, codes, seq_ids)


def check_against_model(units: list[SAEUnderTest], model: str, n_layers: int, d_model: int) -> None:
    for unit in units:
        cfg = unit.sae.cfg
        if cfg.d_in != d_model:
            raise InputError(
                f"{unit.path}: SAE d_in={cfg.d_in} but model {model} has width {d_model}"
            )
        if unit.sae.site.layer >= n_layers:
            raise InputError(
                f"{unit.path}: layer {unit.sae.site.layer} out of range: model {model} has "
                f"{n_layers} blocks (0..{n_layers - 1})"
            )


def ensure_default_sae(opts: DiagnoseOptions) -> Path:
    """The shipped default SAE (package data, built by `saedoctor train`)."""
    path = defaults.default_sae_dir()
    if not (path / "cfg.json").is_file():
        raise InputError(f"{path}: the default SAE is missing from this install; reinstall "
                         "saedoctor, or pass --sae")  # fmt: skip
    return path
