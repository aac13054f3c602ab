"""How much the default SAE's health moves from one training seed to the next.

    .venv/bin/python benchmarks/default_sae_seeds.py [--seeds 1 2] [--jobs 2] [--quick] [--out DIR]

The shipped default SAE (package data, `src/saedoctor/data/default_sae`) was trained by the
command recorded in its `cfg.json` (`saedoctor.train.default.train_command`, seed 0). This
script trains the same command with other seeds, stores each the way the shipped one is
stored (float16), diagnoses the shipped SAE and every retrained one in one `saedoctor
diagnose` run (one forward pass; the default corpus, tokens and loss-recovered budget) and
records, per headline metric, every SAE's value and the largest difference between two seeds.

That spread is the tolerance `tests/test_default_sae.py` gives a retrain with the shipped
seed: rerunning the recorded command must land no further from the shipped SAE than two
different seeds land from each other (a same-seed rerun differs only by floating-point
summation order, a far smaller change than a new seed). Writes `<out>/default_sae_seeds.json`.
A metric outcome, not a timing: training takes `train_wall_s` per seed on this machine.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import _results

NAME = "default_sae_seeds"
# The metrics a retrain must reproduce: the report's headline health numbers.
METRICS = ("variance_explained", "loss_recovered", "l0", "dead_pct", "always_on_count",
           "diversity_top10", "absorption")  # fmt: skip
QUICK_TOKENS = 2048


def train_seeds(seeds: list[int], work: Path, quick: bool, jobs: int) -> dict[int, Path]:
    """One float16 SAE per seed, built by the recorded command, `jobs` at a time (each
    training child then gets its share of the cores). `--quick`: random SAEs of the default's
    shape instead, to exercise the rest of the script in seconds."""
    from saedoctor.train import default as default_sae

    if quick:
        from _fixtures import random_default_shape_sae

        return {seed: random_default_shape_sae(work / f"seed{seed}") for seed in seeds}
    if jobs > 1:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        built = pool.map(lambda seed: default_sae.build_default_sae(work / f"seed{seed}", seed),
                         seeds)  # fmt: skip
        return dict(zip(seeds, built, strict=True))


def diagnose_all(paths: dict[str, Path], quick: bool) -> dict[str, dict[str, Any]]:
    """Every SAE's headline metrics and grade, from one diagnosis run."""
    from saedoctor.diagnose import DiagnoseOptions, diagnose

    opts = DiagnoseOptions(saes=[str(p) for p in paths.values()], quiet=True)
    if quick:
        opts.tokens, opts.downstream = QUICK_TOKENS, False
    report = diagnose(opts)
    out = {}
    for label, entry in zip(paths, report["saes"], strict=True):
        values = {key: entry["metrics"].get(key) for key in METRICS}
        out[label] = {**values, "grade": entry["grading"]["grade"]}
    out["_run"] = {"corpus": report["run"].get("corpus"),
                   "tokens_counted": report["run"].get("tokens_counted")}  # fmt: skip
    return out


def seed_spread(results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Per metric, the largest difference between two SAEs trained with different seeds."""
    spread: dict[str, float | None] = {}
    for key in METRICS:
        values = [r[key] for r in results.values() if r.get(key) is not None]
        pairs = [abs(a - b) for a, b in itertools.combinations(values, 2)]
        spread[key] = max(pairs) if pairs else None
    return spread


def main() -> None:
    started = time.time()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2],
                        help="seeds to train besides the shipped seed 0")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=1,
                        help="trainings run at once (the outcome does not depend on it)")
    _results.add_arguments(parser)
    args = parser.parse_args()
    from saedoctor import defaults
    from saedoctor.sae.loaders import load_sae

    with tempfile.TemporaryDirectory(prefix="saedoctor-seeds-") as tmp:
        trained = train_seeds(args.seeds, Path(tmp), args.quick, args.jobs)
        paths = {"seed0 (shipped)": defaults.default_sae_dir(),
                 **{f"seed{s}": p for s, p in trained.items()}}  # fmt: skip
        wall = {f"seed{s}": load_sae(p).cfg.metadata.get("build", {}).get("train_wall_s")
                for s, p in trained.items()}  # fmt: skip
        results = diagnose_all(paths, args.quick)
    run = results.pop("_run")
    payload = {
        "shipped_command": load_sae(defaults.default_sae_dir()).cfg.metadata["build"]["command"],
        "seeds": [0, *args.seeds],
        "diagnosis": run,
        "saes": results,
        "seed_spread": seed_spread(results),
        "train_wall_s": wall,
    }
    for label, r in results.items():
        print(f"{label}: " + ", ".join(f"{k} {r[k]}" for k in (*METRICS, "grade")),
              file=sys.stderr)  # fmt: skip
    print(f"spread: {payload['seed_spread']}", file=sys.stderr)
    _results.write_result(NAME, payload, _results.out_dir(args), started, quick=args.quick)


if __name__ == "__main__":
    main()
