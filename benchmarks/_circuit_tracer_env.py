"""A private virtual environment for the peer tool circuit-tracer, and a way to run code in it.

circuit-tracer 0.5.0 pins `transformers<=4.57.3`, which cannot live beside saedoctor's
transformers 5.x, so it gets its own venv under
`$XDG_CACHE_HOME/saedoctor/peers/circuit-tracer-0.5.0/` (default `~/.cache/...`), built once
from PyPI. Code that needs circuit-tracer runs there as a subprocess:
`benchmarks/_circuit_tracer_worker.py`, which imports circuit_tracer and never saedoctor.

    python benchmarks/_circuit_tracer_env.py     # build if needed; print python + versions
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

PEER_VERSION = "0.5.0"
# CPU torch goes in first, by itself, as in the Makefile: with no torch present, circuit-tracer's
# bare `torch>=2.0.0` would pull a multi-GB CUDA build. 2.13.0 is the release saedoctor uses
# and has a CPU wheel on the package index this project uses.
TORCH_REQUIREMENT = "torch==2.13.0"
# The libraries whose numerics the comparisons depend on are pinned, so that a rebuild months
# later computes the same thing; the rest follows circuit-tracer's own requirements. nnsight
# 0.8 moved `nnsight.intervention.tracing`, which circuit-tracer 0.5.0's nnsight backend
# imports, so it is held at 0.7.0 (0.6.3 works too).
PEER_REQUIREMENTS = (
    f"circuit-tracer=={PEER_VERSION}",
    "transformers==4.57.3",
    "transformer-lens==3.2.1",
    "nnsight==0.7.0",
)
WORKER = Path(__file__).resolve().with_name("_circuit_tracer_worker.py")
MARKER_NAME = ".saedoctor-peer-ready"
IMPORT_CHECK = (
    "import circuit_tracer.transcoder, circuit_tracer.attribution.attribute; "
    "import circuit_tracer.replacement_model.replacement_model_nnsight; "
    "import circuit_tracer.replacement_model.replacement_model_transformerlens"
)
REPORTED_PACKAGES = ("circuit-tracer", "torch", "transformers", "transformer-lens", "nnsight")


def _say(message: str) -> None:
    # stderr, so that a caller parsing stdout (the CLI's python path) is not disturbed.
    print(f"[circuit-tracer env] {message}", file=sys.stderr, flush=True)


def env_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "saedoctor" / "peers" / f"circuit-tracer-{PEER_VERSION}"


def env_python(root: Path | None = None) -> Path:
    return (root or env_dir()) / "bin" / "python"


def _wanted() -> dict[str, object]:
    # Recorded in the marker: a change of requirements here makes the env rebuild itself.
    return {"torch": TORCH_REQUIREMENT, "peer": list(PEER_REQUIREMENTS)}


def _is_ready(root: Path) -> bool:
    marker = root / MARKER_NAME
    if not (marker.is_file() and env_python(root).exists()):
        return False
    try:
        return json.loads(marker.read_text()).get("requirements") == _wanted()
    except (OSError, ValueError):
        return False


def _clean_env() -> dict[str, str]:
    # The peer must see neither saedoctor's sources nor user site-packages, and must never try
    # the hub: everything it loads comes from local files.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PYTHONNOUSERSITE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_HUB_DISABLE_TELEMETRY="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def _run_step(label: str, cmd: list[str]) -> None:
    _say(label)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_clean_env(), check=False)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-4000:]
        raise RuntimeError(f"{label} failed (exit {proc.returncode}):\n{tail}")


def _base_python() -> str:
    # A venv made from inside another venv is still based on the real interpreter, but the
    # base one is named explicitly so that nothing of the calling venv leaks in.
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
              [*pip, TORCH_REQUIREMENT, *PEER_REQUIREMENTS])
    # Both replacement-model backends are imported: a dependency release that breaks one
    # (as nnsight 0.8 does) fails the build here rather than in a benchmark.
    _run_step("checking that circuit_tracer and both its backends import",
              [str(env_python(root)), "-c", IMPORT_CHECK])
    (root / MARKER_NAME).write_text(json.dumps({"requirements": _wanted()}, indent=1) + "\n")
    _say("ready")


def ensure_env() -> Path:
    """Build the peer venv unless a complete one exists; return its python."""
    root = env_dir()
    if _is_ready(root):
        return env_python(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    # A lock beside the env: parallel test workers wait for one build instead of racing.
    with open(root.parent / f"{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _is_ready(root):
            _build(root)
    return env_python(root)


def run_worker(
    args: list[str], *, check: bool = True, timeout: float | None = None
) -> subprocess.CompletedProcess:
    """Run `_circuit_tracer_worker.py ARGS` with the peer python; text output is captured."""
    cmd = [str(ensure_env()), str(WORKER), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_clean_env(),
                          timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"circuit-tracer worker {args[:1]} failed (exit {proc.returncode}):\n"
            f"{proc.stderr[-4000:]}"
        )
    return proc


def peer_versions(python: Path) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        f"print(json.dumps({{p: m.version(p) for p in {list(REPORTED_PACKAGES)!r}}}))"
    )
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                         env=_clean_env(), check=True)
    return json.loads(out.stdout)


def main() -> int:
    python = ensure_env()
    print(python)
    for name, version in peer_versions(python).items():
        print(f"{name} {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
