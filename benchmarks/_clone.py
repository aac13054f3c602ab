"""A fresh clone of this repository's current commit, for timing what a new user runs.

Full runs create the clone's own `.venv` with `make setup` (network: pip). Quick smoke runs
cannot afford that: `quick_make_args` makes `make` skip `setup` and run its recipe with a
stand-in `BIN` folder whose programs run the clone's `src/` in this repository's venv.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import _proc
from _results import REPO, git_state


def clone_current_commit(dest: Path) -> str:
    """`git clone` this repository into `dest` at its HEAD commit; returns the commit.
    Uncommitted changes are not in the clone (the result's `versions.git_dirty` says so)."""
    commit, _ = git_state(REPO)
    if commit is None:
        raise SystemExit(f"{REPO} is not a git checkout: nothing to clone")
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(dest)], check=True)
    subprocess.run(["git", "-C", str(dest), "checkout", "--quiet", commit], check=True)
    return commit


def make_setup(clone: Path, log: Path) -> _proc.Measured:
    """`make setup` in the clone: its own fresh .venv, every package installed."""
    return _proc.check(_proc.run_measured(["make", "setup"], log=log, cwd=clone), "make setup")


def quick_bin(folder: Path, clone: Path, extra_args: Mapping[str, list[str]]) -> Path:
    """A stand-in for the clone's `.venv/bin`: `python` is this venv's interpreter and each
    name in `extra_args` (e.g. `saedoctor`) runs `python -m <name> ... <extra args>`."""
    folder.mkdir(parents=True, exist_ok=True)
    scripts = {"python": f'exec {sys.executable} "$@"\n'}
    for name, extra in extra_args.items():
        tail = " ".join(f"'{a}'" for a in extra)
        scripts[name] = f'exec {sys.executable} -m {name} "$@" {tail}\n'
    for name, body in scripts.items():
        path = folder / name
        path.write_text(f"#!/bin/sh\nPYTHONPATH={clone / 'src'}${{PYTHONPATH:+:$PYTHONPATH}}\n"
                        f"export PYTHONPATH\n{body}")  # fmt: skip
        path.chmod(0o755)
    return folder


def quick_make_args(shim: Path) -> list[str]:
    """`make` arguments that skip `setup` (no venv, no pip) and use `shim` as BIN."""
    return ["-o", "setup", f"BIN={shim}"]


def recipe_echoes(clone: Path, target: str, make_args: list[str]) -> set[str]:
    """The command lines `make` echoes for `target`: not output of the program itself."""
    done = subprocess.run(["make", "-n", *make_args, target], cwd=clone, capture_output=True,
                          text=True, check=True)  # fmt: skip
    return {line.strip() for line in done.stdout.splitlines() if line.strip()}


def fresh_caches(root: Path) -> dict[str, str]:
    """Environment with every cache a first run would fill pointed at empty folders."""
    env = dict(os.environ)
    for var, sub in (("SAEDOCTOR_CACHE", "saedoctor"), ("HF_HOME", "hf"),
                     ("HF_DATASETS_CACHE", "hf/datasets"), ("XDG_CACHE_HOME", "xdg")):  # fmt: skip
        path = root / sub
        path.mkdir(parents=True, exist_ok=True)
        env[var] = str(path)
    env.pop("HF_HUB_CACHE", None)
    env.pop("TRANSFORMERS_CACHE", None)
    return env
