"""`saedoctor train` warns, and refuses nothing, when an input site has activation outliers:
γ = ‖μ‖/‖σ‖ ≥ 1 predicts latents dead at initialisation (arXiv 2605.31518). One line, from
the first pool of activations, before the first step."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from saedoctor.activations.moments import LazyMoments
from saedoctor.activations.outliers import GAMMA_HIGH, OutlierSeverity, severity_of
from saedoctor.diagnose.preflight_meta import CENTRING_INITS
from saedoctor.sae.site import Site
from saedoctor.train.sae_trainer import TrainableSAE


def warn_outliers(console: Console, saes: list[Any], stats: LazyMoments) -> None:
    """Print the warning line for `saes` (about to be initialised) when any input is high;
    `stats`: the moments of the pool's activations by site."""
    line = outlier_warning([s for s in saes if isinstance(s, TrainableSAE)], stats)
    if line is not None:
        console.print(f"[bold yellow]warning[/]: {line}", highlight=False)


def outlier_warning(saes: list[TrainableSAE], stats: LazyMoments) -> str | None:
    """The warning's text, or None when every input site's γ is below GAMMA_HIGH."""
    severities = {sae.site: severity_of(stats[sae.site]) for sae in saes}
    high = [sae for sae in saes if severities[sae.site].high]
    if not high:
        return None
    sites = ", ".join(_site(sae.site, severities[sae.site]) for sae in high)
    return (f"activation outliers at {sites} (γ = ‖mean‖/‖std‖ ≥ {GAMMA_HIGH}) predict latents "
            f"dead at initialisation (arXiv 2605.31518); {_advice(high)}")  # fmt: skip


def _site(site: Site, severity: OutlierSeverity) -> str:
    return f"{site.hook_name} γ={severity.gamma:.2f}"


def _advice(saes: list[TrainableSAE]) -> str:
    if any(sae.transcoder for sae in saes):
        return "a transcoder's input is not centred by b_dec: watch dead_pct"
    if all(sae.cfg.b_dec_init in CENTRING_INITS for sae in saes):
        return "b_dec_init mean centres the input from step 0, which removes that cause"
    return "--b-dec-init mean centres the input from step 0 and removes that cause"
