"""The four pre-flight measurements of one SAE on the pre-flight sample (pure: the rules in
saedoctor.health.rules.preflight_* decide what they mean)."""

from __future__ import annotations

import math

import torch

from saedoctor.activations.outliers import outlier_severity
from saedoctor.diagnose import preflight_meta as meta
from saedoctor.diagnose.preflight_fit import BlockedFit, gap, reconstruct
from saedoctor.diagnose.preflight_sample import Sample
from saedoctor.diagnose.preflight_sites import Wiring, candidate_wirings, declared_wiring
from saedoctor.health.preflight import (
    NormCheck,
    OutlierCheck,
    ScaleFit,
    SiteCheck,
    SiteFit,
    SpecialCheck,
)
from saedoctor.sae.model import SAE

# Input scales tried by the norm check: powers of 2 from 1/16 to 16, then half and quarter
# octaves either side of the best one (any scale in range lands within 2^⅛ of a tried one).
COARSE_OCTAVES = range(-4, 5)
REFINE_OCTAVES = (0.5, 0.25)
MIN_ROWS = 8  # fewer finite rows than this: the check reports it did not run


class TooFewRows(ValueError):
    """The sample holds too few usable rows for a check."""


def _fit(sae: SAE, sample: Sample, wiring: Wiring, scale: float = 1.0) -> BlockedFit:
    """The SAE's blocked fit on the sample's rows; TooFewRows when it cannot be measured."""
    x, y = sample.pair(*wiring)
    out = reconstruct(sae, x, scale)
    rows = int(out.keep.sum())
    if rows < MIN_ROWS:
        raise TooFewRows(f"{rows} rows at {wiring[0]} with a finite input and SAE output")
    fit = out.fit(y)
    if not math.isfinite(fit.fvu()):
        raise TooFewRows(f"no variance at {wiring[0]}")
    return fit


def _try_fit(sae: SAE, sample: Sample, wiring: Wiring, scale: float = 1.0) -> BlockedFit | None:
    """`_fit`, or None for an alternative that cannot be measured (left out of the check)."""
    try:
        return _fit(sae, sample, wiring, scale)
    except TooFewRows:
        return None


# -- (a) site --------------------------------------------------------------------------------
def site_wirings(sae: SAE, n_layers: int) -> list[Wiring]:
    return [declared_wiring(sae), *candidate_wirings(sae, n_layers)]


def check_site(sae: SAE, sample: Sample, n_layers: int) -> SiteCheck:
    declared = declared_wiring(sae)
    base = _fit(sae, sample, declared)
    tried = [(w, _try_fit(sae, sample, w)) for w in candidate_wirings(sae, n_layers)]
    fits = sorted(((w, f) for w, f in tried if f is not None), key=lambda item: item[1].fvu())
    candidates = [_site_fit(w, f) for w, f in fits]
    return SiteCheck(_site_fit(declared, base), candidates,
                     gap(base, fits[0][1]) if fits else None)  # fmt: skip


def _site_fit(wiring: Wiring, fit: BlockedFit) -> SiteFit:
    site = wiring[0]
    return SiteFit(site.hook_name, site.layer, site.kind, fit.fvu())


# -- (b) input norm --------------------------------------------------------------------------
def check_norm(sae: SAE, sample: Sample, wiring: Wiring) -> NormCheck:
    fits = {1.0: _fit(sae, sample, wiring)}
    _scan(sae, sample, wiring, fits, [2.0**k for k in COARSE_OCTAVES])
    for step in REFINE_OCTAVES:
        best = min(fits, key=lambda c: fits[c].fvu())
        _scan(sae, sample, wiring, fits, [best * 2**-step, best * 2**step])
    best = min(fits, key=lambda c: fits[c].fvu())
    x, _ = sample.pair(*wiring)
    mean_norm = float(x.double().norm(dim=1).mean())
    scan = [ScaleFit(c, fits[c].fvu()) for c in sorted(fits)]
    return NormCheck(mean_norm, outlier_severity(x).std_norm, scan,
                     ScaleFit(best, fits[best].fvu()), ScaleFit(1.0, fits[1.0].fvu()),
                     gap(fits[1.0], fits[best]), meta.norm_hints(sae))  # fmt: skip


def _scan(sae: SAE, sample: Sample, wiring: Wiring, fits: dict[float, BlockedFit],
          scales: list[float]) -> None:  # fmt: skip
    """Add the fits at `scales` (those not tried yet and measurable) to `fits`."""
    for c in scales:
        if c not in fits and (fit := _try_fit(sae, sample, wiring, c)) is not None:
            fits[c] = fit


# -- (c) BOS / special tokens ----------------------------------------------------------------
def check_special(sae: SAE, sample: Sample, wiring: Wiring,
                  evaluated_with: bool) -> SpecialCheck:  # fmt: skip
    without = _measure(sae, *sample.pair(*wiring))
    with_special = _measure(sae, *sample.pair(*wiring, with_special=True))
    only = _special_only(sae, sample, wiring)
    trained, source = meta.trained_with_special(sae)
    return SpecialCheck(
        tokens=sample.tokens, special_tokens=int(sample.special.sum()),
        fvu_without=without[0], fvu_with=with_special[0],
        l0_without=without[1], l0_with=with_special[1], fvu_special_only=only,
        evaluated_with_special=evaluated_with, trained_with_special=trained,
        trained_source=source,
    )  # fmt: skip


def _special_only(sae: SAE, sample: Sample, wiring: Wiring) -> float | None:
    """FVU on the special positions alone; None when they have no spread (one BOS at
    position 0 of every sequence is one and the same activation)."""
    try:
        fvu = _measure(sae, *sample.special_pair(*wiring))[0]
    except TooFewRows:
        return None
    return fvu if math.isfinite(fvu) else None


def _measure(sae: SAE, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(FVU, mean L0) of the SAE on these rows."""
    out = reconstruct(sae, x)
    if int(out.keep.sum()) < 2:
        raise TooFewRows(f"{int(out.keep.sum())} rows with a finite input and SAE output")
    return out.fit(y).fvu(), out.l0


# -- (d) activation-outlier severity ---------------------------------------------------------
def check_outliers(sae: SAE, sample: Sample, wiring: Wiring) -> OutlierCheck:
    x, _ = sample.pair(*wiring)
    if x.shape[0] < MIN_ROWS:
        raise TooFewRows(f"{x.shape[0]} finite rows at {wiring[0]}")
    severity = outlier_severity(x)
    return OutlierCheck(severity.gamma, severity.mean_norm, severity.std_norm,
                        meta.b_dec_init(sae), meta.centred_at_init(sae))  # fmt: skip
