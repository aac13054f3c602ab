"""saedoctor: is this sparse autoencoder healthy, why not, and how to train a better one.

The Python API takes the same options as the command line, under the options dataclasses'
field names (`DiagnoseOptions`, `TrainConfig`, `CacheOptions`; saedoctor.options):

    report = saedoctor.diagnose(saes=["path/to/sae"], tokens=50_000, absorption_sample=512)
    result = saedoctor.train(layers=[4, 10], training_tokens=200_000, out="runs/sweep")
    saedoctor.cache_activations(layers=[6], out="acts/")
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from saedoctor.version import __version__

if TYPE_CHECKING:
    from saedoctor.activations.cache_options import CacheOptions
    from saedoctor.diagnose import DiagnoseOptions
    from saedoctor.sae.model import SAE
    from saedoctor.train.config import TrainConfig
    from saedoctor.train.trainer import TrainResult


def diagnose(opts: DiagnoseOptions | None = None, **overrides: Any) -> dict[str, Any]:
    """Measure every health metric of one or more SAEs; returns the report document.
    `overrides`: `DiagnoseOptions` fields, applied on top of `opts`."""
    from saedoctor.diagnose.run import diagnose as _diagnose

    return _diagnose(opts, **overrides)


def train(config: TrainConfig | None = None, **kwargs: Any) -> TrainResult:
    """Train SAEs: `TrainConfig` fields as keywords, applied on top of `config`; `out`,
    `quiet`, `keep_checkpoint`, `distribute_layers` as for `saedoctor train`."""
    from saedoctor.train.api import train_saes

    return train_saes(config, **kwargs)


def cache_activations(opts: CacheOptions | None = None, **overrides: Any) -> dict[str, Path]:
    """Write a model's activations once (`saedoctor cache-activations`); returns the
    directory written per site hook name. `overrides`: `CacheOptions` fields."""
    from saedoctor.activations.cache_write import write_activation_cache

    return write_activation_cache(opts, **overrides)


def load_sae(path: str, **kwargs: Any) -> SAE:
    """Load an SAE of any supported format (auto-detected)."""
    from saedoctor.sae.loaders import load_sae as _load_sae

    return _load_sae(path, **kwargs)


def save_sae(sae: SAE, directory: str) -> Any:
    """Write an SAE in the native (SAELens) layout."""
    from saedoctor.sae.loaders import save_sae as _save_sae

    return _save_sae(sae, directory)


def always_on_filter(report: dict[str, Any]) -> dict[str, Any]:
    """Always-on features of each SAE of a report, for circuit-tracing tools to drop.

    Returns a `saedoctor.filter/2` document: `{"schema", "model", "threshold", "always_on"}`,
    where `always_on` is keyed by hook name (e.g. "blocks.22.hook_resid_post"; the SAE's name
    when the report has no site) and each value is `{"layer", "site", "sae", "features":
    [{"id": 290, "density": 0.91}, ...]}` (`density` null when the report does not give it,
    `density_range` added when it gives a spread). A feature id means nothing without its
    layer, so there is no union of ids across layers (docs/circuit_tracing.md).
    """
    from saedoctor.report.filter import always_on_filter as _filter

    return _filter(report)


def read_report(path: str) -> dict[str, Any]:
    """Read and validate a report JSON written by `saedoctor diagnose`."""
    from saedoctor.report.document import read_report as _read

    return _read(path)


__all__ = ["__version__", "always_on_filter", "cache_activations", "diagnose", "load_sae",
           "read_report", "save_sae", "train"]  # fmt: skip
