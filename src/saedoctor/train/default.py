"""The embedded default SAE: built once by `saedoctor train`, shipped as package data.

A first `saedoctor diagnose` then needs no training. The shipped SAE's `cfg.json` records how
it was built (`metadata.build`): the exact `saedoctor train` command, the corpus, the token
count, the versions and the commit, and that its weights are stored in float16 (to halve the
package; they load widened to float32). `build_default_sae` reproduces it:

    .venv/bin/python -m saedoctor.train.default --out src/saedoctor/data/default_sae
"""

from __future__ import annotations

import argparse
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from saedoctor import defaults
from saedoctor.version import __version__

# The run that made the shipped SAE: `saedoctor train` on the embedded default, one pass over
# python-docs@train. `OUT` stands for the output folder.
TRAIN_ARGS = (
    "train", "--layer", str(defaults.DEFAULT_LAYER), "--site", defaults.DEFAULT_SITE_KIND,
    "--dataset", defaults.DEFAULT_TRAIN_CORPUS, "--tokens", str(defaults.DEFAULT_TRAIN_TOKENS),
    "--architecture", "topk", "--expansion-factor", str(defaults.DEFAULT_EXPANSION),
    "--top-k", str(defaults.DEFAULT_K),
)  # fmt: skip
SEED = 0
OUT = "OUT"
STORED_DTYPE = torch.float16


def train_command(out: str | Path = OUT, seed: int = SEED) -> list[str]:
    """The `saedoctor train` command line (without the interpreter) writing into `out`; the
    shipped SAE is the one with the default seed."""
    return ["saedoctor", *TRAIN_ARGS, "--seed", str(seed), "--out", str(out)]


def run_train(out: Path, seed: int = SEED, env: dict[str, str] | None = None) -> Path:
    """Run the recorded command with this interpreter; returns the trained SAE's folder."""
    argv = [sys.executable, "-m", "saedoctor", *train_command(out, seed)[1:]]
    subprocess.run(argv, check=True, env=env)
    folders = [d for d in out.iterdir() if (d / "cfg.json").is_file()]
    if len(folders) != 1:
        raise RuntimeError(f"{out}: expected one trained SAE folder, found {len(folders)}")
    return folders[0]


def build_default_sae(out: Path, seed: int = SEED) -> Path:
    """Train with the recorded command, store in float16 with its build record, into `out`."""
    from saedoctor.sae.loaders import load_sae, save_sae

    with tempfile.TemporaryDirectory(prefix="saedoctor-default-") as tmp:
        start = time.perf_counter()
        trained = run_train(Path(tmp) / "run", seed)
        seconds = time.perf_counter() - start
        sae = load_sae(trained)
    sae = sae.to(STORED_DTYPE)
    sae.cfg.dtype = str(STORED_DTYPE).removeprefix("torch.")
    sae.cfg.metadata["build"] = build_record(seconds, seed)
    return save_sae(sae, out)


def build_record(train_seconds: float, seed: int = SEED) -> dict[str, Any]:
    import transformers

    return {
        "command": shlex.join(train_command(seed=seed)),
        "argv": train_command(seed=seed),
        "out_placeholder": OUT,
        "corpus": defaults.DEFAULT_TRAIN_CORPUS,
        "training_tokens_requested": defaults.DEFAULT_TRAIN_TOKENS,
        "stored_dtype": str(STORED_DTYPE).removeprefix("torch."),
        "note": "trained in float32; weights stored in float16 and widened to float32 on load",
        "saedoctor": __version__,
        "git_commit": _git_commit(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "train_wall_s": round(train_seconds, 1),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True)  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip() or None


def main() -> None:
    parser = argparse.ArgumentParser(description="Rebuild the shipped default SAE.")
    parser.add_argument("--out", type=Path, default=defaults.default_sae_dir())
    parser.add_argument("--seed", type=int, default=SEED, help="the shipped SAE uses 0")
    args = parser.parse_args()
    print(build_default_sae(args.out, args.seed))


if __name__ == "__main__":
    main()
