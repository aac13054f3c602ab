"""`saedoctor compare --features A B`: load two dictionaries, match their decoder rows
(metrics/feature_match.py) and, given their diagnose reports, say which always-on and dead
features of each have a counterpart in the other. Drawn by report/feature_match_render.py."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from saedoctor.errors import InputError
from saedoctor.metrics.feature_match import (
    AUTO,
    HUNGARIAN,
    MATCH_THRESHOLD,
    METHODS,
    FeatureMatch,
    hungarian_bytes,
    hungarian_fits,
    match_features,
)
from saedoctor.report.feature_flags import FlaggedIds, flagged_ids


@dataclass(frozen=True)
class Counterpart:
    """A flagged feature of one side and its partner on the other (None: no counterpart at
    cos >= threshold); `partner_flag` is the partner's own flag in the other report."""

    feature: int
    partner: int | None
    cos: float | None
    partner_flag: str | None


@dataclass(frozen=True)
class SideFlags:
    """One side's always-on and dead features, each with its counterpart (or None)."""

    entry: str
    always_on: list[Counterpart]
    dead: list[Counterpart]

    def of(self, flag: str) -> list[Counterpart]:
        return self.always_on if flag == "always_on" else self.dead


@dataclass(frozen=True)
class Dictionary:
    """What the comparison names of one side."""

    source: str
    d_in: int
    d_sae: int


@dataclass(frozen=True)
class FeatureComparison:
    a: Dictionary
    b: Dictionary
    match: FeatureMatch
    flags_a: SideFlags | None
    flags_b: SideFlags | None
    wall_s: float


def compare_features(path_a: Path, path_b: Path, *, threshold: float | None = None,
                     method: str = AUTO, report_a: Path | None = None,
                     report_b: Path | None = None) -> FeatureComparison:  # fmt: skip
    """Everything `compare --features` shows; bad input raises InputError naming the flag.
    `threshold` None: MATCH_THRESHOLD; `method`: auto | hungarian | best-match."""
    threshold = MATCH_THRESHOLD if threshold is None else threshold
    method = method_name(method)
    check_options(threshold, report_a, report_b)
    start = time.perf_counter()
    dec_a, dict_a = _decoder(path_a)
    dec_b, dict_b = _decoder(path_b)
    _check_widths(dict_a, dict_b, dec_a, dec_b)
    _check_method(method, dict_a.d_sae, dict_b.d_sae)
    ids_a = ids_b = flags_a = flags_b = None
    if report_a is not None and report_b is not None:  # read first: a bad one fails fast
        ids_a = _flagged(report_a, path_a, dict_a.d_sae, "--report-a")
        ids_b = _flagged(report_b, path_b, dict_b.d_sae, "--report-b")
    match = match_features(dec_a, dec_b, threshold=threshold, method=method)
    if ids_a is not None and ids_b is not None:
        flags_a = side_flags(ids_a, ids_b, match.partners_of_a())
        flags_b = side_flags(ids_b, ids_a, match.partners_of_b())
    return FeatureComparison(dict_a, dict_b, match, flags_a, flags_b,
                             time.perf_counter() - start)  # fmt: skip


def method_name(given: str) -> str:
    """The matching method a `--method` value names ("best-match" or "best_match")."""
    method = given.replace("-", "_")
    if method not in METHODS:
        raise InputError(f"--method {given!r}: expected auto, hungarian or best-match")
    return method


def check_options(threshold: float, report_a: Path | None, report_b: Path | None) -> None:
    if not 0 < threshold <= 1:
        raise InputError(f"--threshold {threshold}: expected a cosine in (0, 1]")
    if (report_a is None) != (report_b is None):
        raise InputError("--report-a / --report-b: expected both (each SAE's diagnose report) "
                         "or neither")  # fmt: skip


def side_flags(own: FlaggedIds, other: FlaggedIds,
               partners: dict[int, tuple[int, float]]) -> SideFlags:  # fmt: skip
    """Each flagged feature of `own` with its partner (from `partners`) and that partner's
    flag in `other`."""

    def counterparts(ids: list[int]) -> list[Counterpart]:
        out = []
        for feature in ids:
            partner, cos = partners.get(feature, (None, None))
            flag = other.flag_of(partner) if partner is not None else None
            out.append(Counterpart(feature, partner, cos, flag))
        return out

    return SideFlags(own.entry, counterparts(own.always_on), counterparts(own.dead))


def _decoder(path: Path) -> tuple[torch.Tensor, Dictionary]:
    from saedoctor.sae.loaders import load_sae

    sae = load_sae(path)
    W_dec = sae.W_dec.detach()
    if not bool(torch.isfinite(W_dec).all()):
        raise InputError(f"{path}: the decoder holds NaN or inf values; expected finite weights")
    return W_dec, Dictionary(str(path), sae.cfg.d_in, sae.cfg.d_sae)


def _check_widths(a: Dictionary, b: Dictionary, dec_a: torch.Tensor,
                  dec_b: torch.Tensor) -> None:  # fmt: skip
    if a.d_in != b.d_in or dec_a.shape[1] != dec_b.shape[1]:
        raise InputError(f"--features {b.source}: d_in={b.d_in}, d_out={dec_b.shape[1]} but "
                         f"{a.source} has d_in={a.d_in}, d_out={dec_a.shape[1]}; expected two "
                         "dictionaries of the same site width")  # fmt: skip


def _check_method(method: str, n_a: int, n_b: int) -> None:
    if method == HUNGARIAN and not hungarian_fits(n_a, n_b):
        need = hungarian_bytes(n_a, n_b) / 2**30
        raise InputError(f"--method hungarian: a {n_a} x {n_b} cosine matrix needs {need:.1f} "
                         "GiB, over the Hungarian budget; expected --method best-match or "
                         "auto")  # fmt: skip


def _flagged(report: Path, sae_path: Path, d_sae: int, flag: str) -> FlaggedIds:
    from saedoctor.report.document import read_report

    return flagged_ids(read_report(report), str(sae_path), d_sae, f"{flag} {report}")
