"""saedoctor: is this sparse autoencoder healthy, why not, and how to train a better one."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from saedoctor.diagnose import DiagnoseOptions
    from saedoctor.sae.model import SAE


def diagnose(opts: DiagnoseOptions | None = None, **overrides: Any) -> dict[str, Any]:
    """Measure every health metric of one or more SAEs; returns the report document."""
    from saedoctor.diagnose import diagnose as _diagnose

    return _diagnose(opts, **overrides)


def load_sae(path: str, **kwargs: Any) -> SAE:
    """Load an SAE of any supported format (auto-detected)."""
    from saedoctor.sae.loaders import load_sae as _load_sae

    return _load_sae(path, **kwargs)


def save_sae(sae: SAE, directory: str) -> Any:
    """Write an SAE in the native (SAELens) layout."""
    from saedoctor.sae.loaders import save_sae as _save_sae

    return _save_sae(sae, directory)


def always_on_filter(report: dict[str, Any]) -> dict[str, Any]:
    """Always-on feature ids per SAE / layer from a report (for circuit-tracing tools)."""
    from saedoctor.report.filter import always_on_filter as _filter

    return _filter(report)


def read_report(path: str) -> dict[str, Any]:
    """Read and validate a report JSON written by `saedoctor diagnose`."""
    from saedoctor.report.document import read_report as _read

    return _read(path)


__all__ = ["__version__", "always_on_filter", "diagnose", "load_sae", "read_report", "save_sae"]
