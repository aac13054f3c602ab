"""The main job: stream activations once, feed every SAE, measure every health metric.

    options.py     what a run is asked to do (`DiagnoseOptions`)
    units.py       the SAEs under test and their metric suites
    model_pass.py  one pass over a corpus: one forward per batch for every SAE
    passes.py      the main pass, the always-on explanation pass, --compare-corpus, caches
    entries.py     the report's per-SAE entries and run metadata
    run.py         `diagnose` and `diagnose_and_write`
"""

from saedoctor.diagnose.model_pass import ModelPass, feed
from saedoctor.diagnose.options import DTYPES, DiagnoseOptions
from saedoctor.diagnose.run import diagnose, diagnose_and_write
from saedoctor.diagnose.units import SAEUnderTest, ensure_default_sae, load_saes, suite_sink

__all__ = [
    "DTYPES", "DiagnoseOptions", "ModelPass", "SAEUnderTest", "diagnose", "diagnose_and_write",
    "ensure_default_sae", "feed", "load_saes", "suite_sink",
]  # fmt: skip
