"""SAEDashboard's own venv (`_peer_env.py`): sae-dashboard 0.8.0 pins `transformer-lens<3`,
`transformers<4.57`, `safetensors<0.5` and `datasets<4`; saedoctor runs transformer-lens 3.x
and transformers 5.x. Code that needs it runs in `_sae_dashboard_worker.py`, which imports
sae_dashboard and never saedoctor.

    python benchmarks/_sae_dashboard_env.py     # build if needed; print python + versions
"""

from __future__ import annotations

import sys
from pathlib import Path

from _peer_env import PeerEnv

PEER_VERSION = "0.8.0"
# transformers 4.56.2 is the newest release under sae-dashboard's `<4.57`; transformer-lens
# 2.17.0 the newest 2.x that accepts it (2.18 wants transformers>=4.57); sae-lens is the
# release saedoctor's own venv has (it accepts transformer-lens 2.16.1+). transformer-lens 2.x
# needs numpy<2, and the newest pyarrow (26, pulled by datasets) refuses numpy<2 at import:
# pyarrow is held at 21.0.0, which imports with numpy 1.26.
# decode-clt (a sae-dashboard requirement, imported only for cross-layer transcoders) pulls
# PyPI's torchvision and torchaudio, whose compiled ops do not load against the CPU torch
# build ("operator torchvision::nms does not exist"); transformers imports torchvision when it
# is installed and then fails. Neither is needed for SAEs, so they are removed again.
ENV = PeerEnv(
    name="sae-dashboard",
    version=PEER_VERSION,
    requirements=(f"sae-dashboard=={PEER_VERSION}", "sae-lens==6.54.12",
                  "transformer-lens==2.17.0", "transformers==4.56.2", "pyarrow==21.0.0"),
    worker=Path(__file__).resolve().with_name("_sae_dashboard_worker.py"),
    import_check=("import sae_dashboard.sae_vis_runner, sae_dashboard.sae_vis_data, "
                  "sae_dashboard.sequence_data_generator; "
                  "from sae_lens import SAE, HookedSAETransformer"),
    reported=("sae-dashboard", "sae-lens", "torch", "transformers", "transformer-lens", "numpy"),
    removed_after_install=("torchvision", "torchaudio"),
)  # fmt: skip
ensure_env, run_worker, peer_versions = ENV.ensure_env, ENV.run_worker, ENV.peer_versions

if __name__ == "__main__":
    sys.exit(ENV.main())
