"""The SAEs under test: loading them, their metric suites, checking them against the model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from saedoctor import defaults
from saedoctor.diagnose.options import DiagnoseOptions
from saedoctor.errors import InputError
from saedoctor.metrics.clt import CLTReconstruction
from saedoctor.metrics.downstream import Downstream
from saedoctor.metrics.finite import RowOrigin
from saedoctor.metrics.suite import MetricSuite
from saedoctor.sae.clt import CrossLayerTranscoder
from saedoctor.sae.codes import Codes
from saedoctor.sae.model import SAE


@dataclass
class SAEUnderTest:
    name: str
    path: str
    sae: SAE
    suite: MetricSuite
    downstream: Downstream = field(default_factory=lambda: Downstream())
    clt: CLTUnderTest | None = None  # the cross-layer transcoder this layer belongs to


@dataclass
class CLTUnderTest:
    """A CLT and its per-layer units; `suite` pools the reconstruction of every layer and
    `downstream` holds the loss of splicing every layer's output at once."""

    clt: CrossLayerTranscoder
    name: str
    path: str
    units: list[SAEUnderTest] = field(default_factory=list)
    suite: CLTReconstruction | None = None
    downstream: Downstream = field(default_factory=Downstream)

    def __post_init__(self) -> None:
        if self.suite is None:
            self.suite = CLTReconstruction(self.clt.n_layers, self.clt.d_model)


def clt_units(clt: CrossLayerTranscoder, path: str, opts: DiagnoseOptions) -> list[SAEUnderTest]:
    """One unit per source layer, all pointing at one shared `CLTUnderTest`."""
    group = CLTUnderTest(clt, Path(path).name, str(path))
    for enc in clt.encoders:
        name = f"{group.name}:{enc.site.hook_name}->{enc.output_site.hook_name}"  # type: ignore[union-attr]
        group.units.append(SAEUnderTest(name, str(path), enc, new_suite(enc, opts), clt=group))
    return group.units


@dataclass
class Rows:
    """The finite rows of one batch through one dictionary: the target `x` (what the decoder
    should write: an SAE's own input, a transcoder's MLP output), its output `x_hat`, the
    codes, the rows' sequence ids, and a skip transcoder's output without the skip term."""

    x: torch.Tensor
    x_hat: torch.Tensor
    codes: Codes
    seq_ids: torch.Tensor
    x_hat_without_skip: torch.Tensor | None = None
    # each row's position in its sequence and its token: what feature cards show (None on
    # cached activations, which carry no text)
    positions: torch.Tensor | None = None
    token_ids: torch.Tensor | None = None

    def select(self, keep: torch.Tensor) -> Rows:
        def kept(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[keep]

        return Rows(self.x[keep], self.x_hat[keep], self.codes.select(keep), self.seq_ids[keep],
                    kept(self.x_hat_without_skip), kept(self.positions),
                    kept(self.token_ids))  # fmt: skip


def row_text(where: RowOrigin | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(positions, token ids) of the rows `where` locates, or Nones when it holds no tokens."""
    if where is None or where.token_ids is None:
        return None, None
    return where.positions(), where.token_ids


# A sink receives, per dictionary and batch, the unit and its rows.
Sink = Callable[[SAEUnderTest, Rows], None]


def load_saes(opts: DiagnoseOptions) -> list[SAEUnderTest]:
    units = []
    for path in opts.saes:
        if _is_clt(path, opts):
            units += _clt_units(path, opts)
            continue
        for sae in _dictionaries(path, opts):
            if sae.site is None and opts.activations is None:
                raise InputError(
                    f"{path}: the SAE's config names no layer; pass --layer (and --site)"
                )
            units.append(SAEUnderTest(_unit_name(sae, path), str(path), sae,
                                      new_suite(sae, opts)))  # fmt: skip
    names = [u.name for u in units]
    for i, unit in enumerate(units):
        if names.count(unit.name) > 1:
            unit.name = f"{unit.name}#{i}"
    return units


def _is_clt(path: str, opts: DiagnoseOptions) -> bool:
    """Whether `path` is a cross-layer transcoder, diagnosed whole (never one layer alone)."""
    from saedoctor.sae.loaders import is_clt
    from saedoctor.sae.site import parse_hook_name

    if not is_clt(path):
        return False
    if opts.layer is not None or opts.site is not None and parse_hook_name(opts.site):
        raise InputError(f"{path}: a cross-layer transcoder is diagnosed whole (each layer's "
                         "output depends on every layer below it); drop --layer / --site")
    return True


def _clt_units(path: str, opts: DiagnoseOptions) -> list[SAEUnderTest]:
    from saedoctor.sae.loaders import load_clt

    if opts.activations is not None:
        raise InputError(f"{path}: a cross-layer transcoder needs every layer's MLP input and "
                         f"output; --activations {opts.activations} holds one site: diagnose "
                         "it on --model")  # fmt: skip
    return clt_units(load_clt(path, device=opts.device), path, opts)


def _dictionaries(path: str, opts: DiagnoseOptions) -> list[SAE]:
    """What one --sae path holds: every layer of a transcoder set unless --layer picks one."""
    from saedoctor.sae.loaders import load_dictionaries, load_sae
    from saedoctor.sae.site import parse_hook_name

    if opts.layer is not None or (opts.site is not None and parse_hook_name(opts.site)):
        return [load_sae(path, layer=opts.layer, site=opts.site, device=opts.device)]
    return load_dictionaries(path, site=opts.site, device=opts.device)


def _unit_name(sae: SAE, path: str) -> str:
    site = sae.site.hook_name if sae.site else "unsited"
    if sae.is_transcoder and sae.output_site is not None and sae.output_site != sae.site:
        site = f"{site}->{sae.output_site.hook_name}"
    return f"{Path(path).name}:{site}"


def new_suite(sae: SAE, opts: DiagnoseOptions) -> MetricSuite:
    """The metrics of one dictionary, measured against what its decoder writes."""
    return MetricSuite(sae.cfg.d_target, sae.cfg.d_sae,
                       always_on_threshold=opts.always_on_threshold,
                       without_skip=sae.W_skip is not None,
                       cards=opts.cards > 0 or bool(opts.card_features))  # fmt: skip


def unit_sites(units: list[SAEUnderTest]) -> list:
    """Every site a run reads (encoder inputs and decoder outputs), in a fixed order."""
    sites = {s for u in units for s in (u.sae.site, u.sae.output_site)}
    for u in units:  # a CLT layer's output needs the inputs of every layer below it
        if u.clt is not None:
            sites |= {s for pair in u.clt.clt.sites for s in pair}
    return sorted(sites)


def output_sites(units: list[SAEUnderTest]) -> list:
    """The sites a run replaces and ablates (where the decoders write)."""
    return sorted({u.sae.output_site for u in units})


def suite_sink(unit: SAEUnderTest, rows: Rows) -> None:
    unit.suite.update(rows.x, rows.x_hat, rows.codes, rows.seq_ids, rows.x_hat_without_skip,
                      positions=rows.positions, token_ids=rows.token_ids)  # fmt: skip
    if unit.clt is not None:  # the same rows: one mask for every layer of a CLT
        unit.clt.suite.update(unit.sae.output_site.layer, rows.x, rows.x_hat)


def check_against_model(units: list[SAEUnderTest], model: str, n_layers: int, d_model: int) -> None:
    for unit in units:
        cfg = unit.sae.cfg
        for what, width in (("d_in", cfg.d_in), ("d_out", cfg.d_target)):
            if width != d_model:
                raise InputError(
                    f"{unit.path}: SAE {what}={width} but model {model} has width {d_model}"
                )
        for site in (unit.sae.site, unit.sae.output_site):
            if site.layer >= n_layers:
                raise InputError(
                    f"{unit.path}: layer {site.layer} out of range: model {model} has "
                    f"{n_layers} blocks (0..{n_layers - 1})"
                )


def ensure_default_sae(opts: DiagnoseOptions) -> Path:
    """The shipped default SAE (package data, built by `saedoctor train`)."""
    path = defaults.default_sae_dir()
    if not (path / "cfg.json").is_file():
        raise InputError(f"{path}: the default SAE is missing from this install; reinstall "
                         "saedoctor, or pass --sae")  # fmt: skip
    return path
