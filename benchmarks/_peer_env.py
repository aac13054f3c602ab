"""A private virtual environment for a peer tool whose pins conflict with saedoctor's, and a
way to run code in it.

Each peer gets its own venv under `$XDG_CACHE_HOME/saedoctor/peers/<name>-<version>/`
(default `~/.cache/...`), built once from PyPI: CPU torch first, by itself (with no torch
present, a bare `torch` requirement would pull a multi-GB CUDA build), then the peer with the
libraries its numerics depend on pinned, so that a rebuild months later computes the same
thing. A marker records the requirements: changing them rebuilds the venv. Code that needs
the peer runs there as a subprocess (the peer's worker script, which never imports
saedoctor), with neither saedoctor's sources, user site-packages nor the network.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# 2.13.0 is the release saedoctor uses and has a CPU wheel on the package index.
TORCH_REQUIREMENT = "torch==2.13.0"
MARKER_NAME = ".saedoctor-peer-ready"
OFFLINE = dict(PYTHONNOUSERSITE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", WANDB_MODE="disabled",
               PIP_DISABLE_PIP_VERSION_CHECK="1")  # fmt: skip


@dataclass(frozen=True)
class PeerEnv:
    name: str  # the PyPI name: "circuit-tracer"
    version: str
    requirements: tuple[str, ...]  # the peer itself first, then the pins
    worker: Path
    import_check: str  # python code that imports what the worker needs
    reported: tuple[str, ...]  # packages whose versions a result file records
    # Installed by the peer's requirements but broken beside CPU torch, and not needed.
    removed_after_install: tuple[str, ...] = ()

    def say(self, message: str) -> None:
        # stderr, so that a caller parsing stdout is not disturbed.
        print(f"[{self.name} env] {message}", file=sys.stderr, flush=True)

    def env_dir(self) -> Path:
        cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(cache) / "saedoctor" / "peers" / f"{self.name}-{self.version}"

    def env_python(self, root: Path | None = None) -> Path:
        return (root or self.env_dir()) / "bin" / "python"

    def wanted(self) -> dict[str, object]:
        wanted: dict[str, object] = {"torch": TORCH_REQUIREMENT, "peer": list(self.requirements)}
        if self.removed_after_install:
            wanted["removed"] = list(self.removed_after_install)
        return wanted

    def is_ready(self, root: Path) -> bool:
        marker = root / MARKER_NAME
        if not (marker.is_file() and self.env_python(root).exists()):
            return False
        try:
            return json.loads(marker.read_text()).get("requirements") == self.wanted()
        except (OSError, ValueError):
            return False

    def run_step(self, label: str, cmd: list[str]) -> None:
        self.say(label)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=clean_env(), check=False)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr)[-4000:]
            raise RuntimeError(f"{label} failed (exit {proc.returncode}):\n{tail}")

    def build(self, root: Path) -> None:
        if root.exists():
            self.say(f"removing incomplete or outdated env at {root}")
            shutil.rmtree(root)
        root.parent.mkdir(parents=True, exist_ok=True)
        python = str(self.env_python(root))
        self.run_step(f"creating venv at {root}", [base_python(), "-m", "venv", str(root)])
        pip = [python, "-m", "pip", "install", "--quiet"]
        self.run_step("upgrading pip", [*pip, "--upgrade", "pip"])
        self.run_step(f"installing {TORCH_REQUIREMENT} (CPU build)", [*pip, TORCH_REQUIREMENT])
        # torch is repeated so that the resolver cannot swap it for another build.
        self.run_step(f"installing {', '.join(self.requirements)} (a few minutes)",
                      [*pip, TORCH_REQUIREMENT, *self.requirements])  # fmt: skip
        if self.removed_after_install:
            self.run_step(f"removing {', '.join(self.removed_after_install)}",
                          [python, "-m", "pip", "uninstall", "--yes", "--quiet",
                           *self.removed_after_install])  # fmt: skip
        # A dependency release that breaks an import fails the build here, not in a benchmark.
        self.run_step(f"checking that {self.name} imports", [python, "-c", self.import_check])
        (root / MARKER_NAME).write_text(json.dumps({"requirements": self.wanted()}, indent=1)
                                        + "\n")  # fmt: skip
        self.say("ready")

    def ensure_env(self) -> Path:
        """Build the peer venv unless a complete one exists; return its python."""
        root = self.env_dir()
        if self.is_ready(root):
            return self.env_python(root)
        root.parent.mkdir(parents=True, exist_ok=True)
        # A lock beside the env: parallel callers wait for one build instead of racing.
        with open(root.parent / f"{root.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not self.is_ready(root):
                self.build(root)
        return self.env_python(root)

    def run_worker(self, args: list[str], *, check: bool = True,
                   timeout: float | None = None) -> subprocess.CompletedProcess:  # fmt: skip
        """Run the worker script with ARGS under the peer python; text output is captured."""
        cmd = [str(self.ensure_env()), str(self.worker), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=clean_env(),
                              timeout=timeout, check=False)  # fmt: skip
        if check and proc.returncode != 0:
            raise RuntimeError(f"{self.name} worker {args[:1]} failed (exit "
                               f"{proc.returncode}):\n{proc.stderr[-4000:]}")  # fmt: skip
        return proc

    def peer_versions(self, python: Path) -> dict[str, str]:
        code = ("import importlib.metadata as m, json\n"
                f"print(json.dumps({{p: m.version(p) for p in {list(self.reported)!r}}}))")
        out = subprocess.run([str(python), "-c", code], capture_output=True, text=True,
                             env=clean_env(), check=True)  # fmt: skip
        return json.loads(out.stdout)

    def main(self) -> int:
        """Build if needed; print the peer python and its versions."""
        python = self.ensure_env()
        print(python)
        for package, version in self.peer_versions(python).items():
            print(f"{package} {version}")
        return 0


def clean_env() -> dict[str, str]:
    """The peer sees neither saedoctor's sources nor user site-packages, and never tries the
    hub or wandb: everything it loads comes from local files."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return {**env, **OFFLINE}


def base_python() -> str:
    """The base interpreter, named explicitly so that nothing of the calling venv leaks in."""
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    return str(base) if base.exists() else sys.executable
