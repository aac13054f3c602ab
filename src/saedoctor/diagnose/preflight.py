"""Pre-flight checks: before the main pass, is each SAE wired to the activations it was
trained on? On the corpus's first `--preflight-tokens` tokens, from one short forward that
reads every site needed:

    site      the SAE at its declared site and at the neighbouring blocks and sites
    norm      its input rescaled ×1/16 … ×16, and the scale its metadata records
    special   FVU and L0 with and without BOS / EOS positions; trained with them?
    outliers  activation-outlier severity γ = ‖μ‖/‖σ‖ of its input site

The results go into each report entry's `preflight` block; the rules in
saedoctor.health.rules.preflight_* turn them into diagnoses. A miswired site or scale is
also printed at once, before minutes of streaming. The pre-flight never fails a run: a
check that cannot run says why in `skipped`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch

from saedoctor import distributed
from saedoctor.diagnose import preflight_checks as checks
from saedoctor.diagnose.options import DiagnoseOptions
from saedoctor.diagnose.preflight_announce import announce
from saedoctor.diagnose.preflight_sample import Sample, read_sample
from saedoctor.diagnose.preflight_sites import Wiring, declared_wiring, sites_of
from saedoctor.diagnose.units import SAEUnderTest
from saedoctor.health.preflight import Preflight
from saedoctor.progress import stderr_console
from saedoctor.sae.site import Site

CLT_SKIPPED = "a cross-layer transcoder's layer (its output depends on every layer below)"
CACHED_SKIPPED = {"site": "cached activations hold one site",
                  "special": "cached activations carry no token ids"}  # fmt: skip
NONFINITE_SKIPPED = "non-finite values (NaN/inf) in the activations or the SAE's output"
CACHED_SITE = Site(0)  # the one site of a cached-activations sample, whatever the SAE says


def run_preflight(opts: DiagnoseOptions, loaded: Any,
                  units: list[SAEUnderTest]) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Every unit's pre-flight results (report form), keyed by unit name; {} when off."""
    wanted = opts.preflight_checks()
    if not wanted or not distributed.world().is_main:
        return {}
    todo = [u for u in units if u.clt is None]
    sites = _needed_sites(todo, wanted, loaded.n_layers)
    try:
        sample = read_sample(loaded, opts, sites) if todo else None
    except torch.cuda.OutOfMemoryError:
        reason = f"out of GPU memory reading {opts.preflight_tokens} tokens at {len(sites)} sites"
        return _all_skipped(units, wanted, reason)
    results = {}
    for unit in units:
        if unit.clt is not None or sample is None:
            results[unit.name] = _skipped(wanted, CLT_SKIPPED, 0)
            continue
        run = _runner(unit, sample, opts, loaded.n_layers, declared_wiring(unit.sae))
        results[unit.name] = _unit(wanted, sample.tokens, run)
    announce(results)
    return {name: p.to_dict() for name, p in results.items()}


def preflight_on_activations(opts: DiagnoseOptions, units: list[SAEUnderTest],
                             acts: Any) -> dict[str, dict[str, Any]]:  # fmt: skip
    """The checks one cached site allows (norm, outliers) on its first rows."""
    from saedoctor.activations.cached import iter_cached_batches

    wanted = opts.preflight_checks()
    if not wanted:
        return {}
    first, _ = next(iter(iter_cached_batches(acts, opts.preflight_tokens)))
    rows = first[: opts.preflight_tokens].float()
    sample = Sample({CACHED_SITE: rows}, torch.zeros(rows.shape[0], dtype=torch.bool))
    results = {}
    for unit in units:
        run = _runner(unit, sample, opts, 1, (CACHED_SITE, CACHED_SITE))
        results[unit.name] = _unit(wanted, sample.tokens, run, CACHED_SKIPPED)
    announce(results)
    return {name: p.to_dict() for name, p in results.items()}


def with_preflight(entry: dict[str, Any], info: dict[str, Any], name: str) -> dict[str, Any]:
    """A report entry with its unit's pre-flight results (`preflight`), when they ran."""
    found = (info.get("preflight") or {}).get(name)
    if found is not None:
        entry["preflight"] = found
    return entry


def _needed_sites(units: list[SAEUnderTest], wanted: tuple[str, ...], n_layers: int) -> set:
    sites: set[Site] = set()
    for unit in units:
        sites |= sites_of([declared_wiring(unit.sae)])
        if "site" in wanted:
            sites |= sites_of(checks.site_wirings(unit.sae, n_layers))
    return sites


Runner = Callable[[str], Any]


def _runner(unit: SAEUnderTest, sample: Sample, opts: DiagnoseOptions, n_layers: int,
            wiring: Wiring) -> Runner:  # fmt: skip
    """`run(check)`: that check's result for this unit."""
    sae = unit.sae
    table: dict[str, Callable[[], Any]] = {
        "site": lambda: checks.check_site(sae, sample, n_layers),
        "norm": lambda: checks.check_norm(sae, sample, wiring),
        "special": lambda: checks.check_special(sae, sample, wiring, opts.include_special),
        "outliers": lambda: checks.check_outliers(sae, sample, wiring),
    }
    return lambda name: table[name]()


def _unit(wanted: tuple[str, ...], tokens: int, run: Runner,
          skip: dict[str, str] | None = None) -> Preflight:  # fmt: skip
    found: dict[str, Any] = {}
    skipped = dict(skip or {})
    for name in wanted:
        if name in skipped:
            continue
        try:
            result = run(name)
        except checks.TooFewRows as err:
            skipped[name] = f"too few rows: {err}"
            continue
        if _finite(dataclasses.asdict(result)):
            found[name] = result
        else:
            skipped[name] = NONFINITE_SKIPPED
    skipped = {k: v for k, v in skipped.items() if k in wanted}
    return Preflight(tokens, list(wanted), skipped=skipped, **found)


def _finite(value: Any) -> bool:
    """Whether every number in a check's result is finite (the report is strict JSON)."""
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_finite(v) for v in value)
    return not isinstance(value, float) or math.isfinite(value)


def _skipped(wanted: tuple[str, ...], reason: str, tokens: int) -> Preflight:
    return Preflight(tokens, list(wanted), skipped=dict.fromkeys(wanted, reason))


def _all_skipped(units: list[SAEUnderTest], wanted: tuple[str, ...],
                 reason: str) -> dict[str, dict[str, Any]]:  # fmt: skip
    stderr_console.print(f"[bold yellow]pre-flight skipped[/]: {reason}", highlight=False,
                         soft_wrap=True)  # fmt: skip
    return {u.name: _skipped(wanted, reason, 0).to_dict() for u in units}
