"""circuit-tracer's own venv (`_peer_env.py`): circuit-tracer 0.5.0 pins
`transformers<=4.57.3`, which cannot live beside saedoctor's transformers 5.x. Code that needs
it runs in `_circuit_tracer_worker.py`, which imports circuit_tracer and never saedoctor.

    python benchmarks/_circuit_tracer_env.py     # build if needed; print python + versions
"""

from __future__ import annotations

import sys
from pathlib import Path

from _peer_env import PeerEnv

PEER_VERSION = "0.5.0"
# nnsight 0.8 moved `nnsight.intervention.tracing`, which circuit-tracer 0.5.0's nnsight
# backend imports, so it is held at 0.7.0 (0.6.3 works too). Both replacement-model backends
# are imported by the check.
ENV = PeerEnv(
    name="circuit-tracer",
    version=PEER_VERSION,
    requirements=(f"circuit-tracer=={PEER_VERSION}", "transformers==4.57.3",
                  "transformer-lens==3.2.1", "nnsight==0.7.0"),
    worker=Path(__file__).resolve().with_name("_circuit_tracer_worker.py"),
    import_check=("import circuit_tracer.transcoder, circuit_tracer.attribution.attribute; "
                  "import circuit_tracer.replacement_model.replacement_model_nnsight; "
                  "import circuit_tracer.replacement_model.replacement_model_transformerlens"),
    reported=("circuit-tracer", "torch", "transformers", "transformer-lens", "nnsight"),
)  # fmt: skip
ensure_env, run_worker, peer_versions = ENV.ensure_env, ENV.run_worker, ENV.peer_versions

if __name__ == "__main__":
    sys.exit(ENV.main())
