"""A private virtual environment for the peer tool SAEDashboard, and a way to run code in it.

sae-dashboard 0.8.0 pins `transformer-lens<3`, `transformers<4.57`, `safetensors<0.5` and
`datasets<4`; saedoctor runs transformer-lens 3.x and transformers 5.x, so it gets its own
venv under `$XDG_CACHE_HOME/saedoctor/peers/sae-dashboard-0.8.0/` (default `~/.cache/...`),
built once from PyPI. Code that needs SAEDashboard runs there as a subprocess:
`benchmarks/_sae_dashboard_worker.py`, which imports sae_dashboard and never saedoctor.

    python benchmarks/_sae_dashboard_env.py     # build if needed; print python + versions
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

PEER_VERSION = "0.8.0"
# CPU torch goes in first, by itself: with no torch present, a bare `torch` requirement
# would pull a multi-GB CUDA build. 2.13.0 is the release saedoctor uses.
TORCH_REQUIREMENT = "torch==2.13.0"
# The libraries whose numerics the comparison depends on are pinned, so that a rebuild months
# later computes the same thing; the rest follows sae-dashboard's own requirements.
# transformers 4.56.2 is the newest release under sae-dashboard's `<4.57`; transformer-lens
# 2.17.0 the newest 2.x that accepts it (2.18 wants transformers>=4.57); sae-lens is the
# release saedoctor's own venv has (it accepts transformer-lens 2.16.1+). transformer-lens 2.x
# needs numpy<2, and the newest pyarrow (26, pulled by datasets) refuses numpy<2 at import:
# pyarrow is held at 21.0.0, which imports with numpy 1.26.
PEER_REQUIREMENTS = (
    f"sae-dashboard=={PEER_VERSION}",
    "sae-lens==6.54.12",
    "transformer-lens==2.17.0",
    "transformers==4.56.2",
    "pyarrow==21.0.0",
)
# decode-clt (a sae-dashboard requirement, imported only for cross-layer transcoders) pulls
# PyPI's torchvision and torchaudio, whose compiled ops do not load against the CPU torch
# build ("operator torchvision::nms does not exist"); transformers imports torchvision when it
# is installed and then fails. Neither is needed for SAEs, so they are removed again.
REMOVED_AFTER_INSTALL = ("torchvision", "torchaudio")
WORKER = Path(__file__).resolve().with_name("_sae_dashboard_worker.py")
MARKER_NAME = ".saedoctor-peer-ready"
IMPORT_CHECK = (
    "import sae_dashboard.sae_vis_runner, sae_dashboard.sae_vis_data, "
    "sae_dashboard.sequence_data_generator; "
    "from sae_lens import SAE, HookedSAETransformer"
)
REPORTED_PACKAGES = ("sae-dashboard", "sae-lens", "torch", "transformers", "transformer-lens",
                     "numpy")  # fmt: skip


def _say(message: str) -> None:
    # stderr, so that a caller parsing stdout is not disturbed.
    print(f"[sae-dashboard env] {message}", file=sys.stderr, flush=True)


def env_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "saedoctor" / "peers" / f"sae-dashboard-{PEER_VERSION}"


def env_python(root: Path | None = None) -> Path:
    return (root or env_dir()) / "bin" / "python"


def _wanted() -> dict[str, object]:
    # Recorded in the marker: a change of requirements here makes the env rebuild itself.
    return {
        "torch": TORCH_REQUIREMENT,
        "peer": list(PEER_REQUIREMENTS),
        "removed": list(REMOVED_AFTER_INSTALL),
    }


def _is_ready(root: Path) -> bool:
    marker = root / MARKER_NAME
    if not (marker.is_file() and env_python(root).exists()):
        return False
    try:
        return json.loads(marker.read_text()).get("requirements") == _wanted()
    except (OSError, ValueError):
        return False


def clean_env() -> dict[str, str]:
    # The peer must see neither saedoctor's sources nor user site-packages, and must never try
    # the hub: everything it loads comes from local files. wandb (a transformer-lens
    # dependency) is kept off the network too.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PYTHONNOUSERSITE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", WANDB_MODE="disabled",
               PIP_DISABLE_PIP_VERSION_CHECK="1")  # fmt: skip
    return env


def _run_step(label: str, cmd: list[str]) -> None:
    _say(label)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=clean_env(), check=False)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-4000:]
        raise RuntimeError(f"{label} failed (exit {proc.returncode}):\n{tail}")


def _base_python() -> str:
    # The base interpreter, named explicitly so that nothing of the calling venv leaks in.
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    return str(base) if base.exists() else sys.executable


def _build(root: Path) -> None:
    if root.exists():
        _say(f"removing incomplete or outdated env at {root}")
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    _run_step(f"creating venv at {root}", [_base_python(), "-m", "venv", str(root)])
    pip = [str(env_python(root)), "-m", "pip", "install", "--quiet"]
    _run_step("upgrading pip", [*pip, "--upgrade", "pip"])
    _run_step(f"installing {TORCH_REQUIREMENT} (CPU build)", [*pip, TORCH_REQUIREMENT])
    # The torch requirement is repeated so that the resolver cannot swap it for another build.
    _run_step(f"installing {', '.join(PEER_REQUIREMENTS)} (a few minutes)",
              [*pip, TORCH_REQUIREMENT, *PEER_REQUIREMENTS])  # fmt: skip
    _run_step(f"removing {', '.join(REMOVED_AFTER_INSTALL)} (see REMOVED_AFTER_INSTALL)",
              [str(env_python(root)), "-m", "pip", "uninstall", "--yes", "--quiet",
               *REMOVED_AFTER_INSTALL])  # fmt: skip
    _run_step("checking that sae_dashboard and sae_lens import",
              [str(env_python(root)), "-c", IMPORT_CHECK])  # fmt: skip
    (root / MARKER_NAME).write_text(json.dumps({"requirements": _wanted()}, indent=1) + "\n")
    _say("ready")


def ensure_env() -> Path:
    """Build the peer venv unless a complete one exists; return its python."""
    root = env_dir()
    if _is_ready(root):
        return env_python(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    # A lock beside the env: parallel callers wait for one build instead of racing.
    with open(root.parent / f"{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _is_ready(root):
            _build(root)
    return env_python(root)


def run_worker(
    args: list[str], *, check: bool = True, timeout: float | None = None
) -> subprocess.CompletedProcess:
    """Run `_sae_dashboard_worker.py ARGS` with the peer python; text output is captured."""
    cmd = [str(ensure_env()), str(WORKER), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=clean_env(),
                          timeout=timeout, check=False)  # fmt: skip
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"sae-dashboard worker failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
        )
    return proc


def peer_versions(python: Path) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        f"print(json.dumps({{p: m.version(p) for p in {list(REPORTED_PACKAGES)!r}}}))"
    )
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                         env=clean_env(), check=True)  # fmt: skip
    return json.loads(out.stdout)


def main() -> int:
    python = ensure_env()
    print(python)
    for name, version in peer_versions(python).items():
        print(f"{name} {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
