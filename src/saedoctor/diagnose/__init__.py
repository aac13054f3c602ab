"""The main job: stream activations once, feed every SAE, measure every health metric.

    options.py     what a run is asked to do (`DiagnoseOptions`)
    units.py       the SAEs under test and their metric suites
    model_pass.py  one pass over a corpus: one forward per batch for every SAE
    passes.py      the main pass, the always-on explanation pass, --compare-corpus, caches
    entries.py     the report's per-SAE entries and run metadata
    run.py         `diagnose` and `diagnose_and_write`

Only the options are imported eagerly, so a command line can read them without loading
torch. The package is callable: `saedoctor.diagnose(...)` is `run.diagnose`
(saedoctor.callable_package).
"""

from __future__ import annotations

from typing import Any

from saedoctor.callable_package import make_callable
from saedoctor.diagnose.options import DTYPES, DiagnoseOptions

__all__ = [
    "DTYPES", "DiagnoseOptions", "ModelPass", "SAEUnderTest", "diagnose", "diagnose_and_write",
    "ensure_default_sae", "feed", "load_saes", "suite_sink",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in ("diagnose", "diagnose_and_write"):
        from saedoctor.diagnose import run

        return getattr(run, name)
    if name in ("ModelPass", "feed"):
        from saedoctor.diagnose import model_pass

        return getattr(model_pass, name)
    if name in ("SAEUnderTest", "ensure_default_sae", "load_saes", "suite_sink"):
        from saedoctor.diagnose import units

        return getattr(units, name)
    raise AttributeError(f"module 'saedoctor.diagnose' has no attribute {name!r}")


def _diagnose(*args: Any, **kwargs: Any) -> dict[str, Any]:
    from saedoctor.diagnose.run import diagnose

    return diagnose(*args, **kwargs)


make_callable(__name__, _diagnose)
