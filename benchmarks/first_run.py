"""The five-minute first run: `make setup` and `make demo` in a fresh clone, empty caches.

    .venv/bin/python benchmarks/first_run.py [--runs 5] [--quick] [--out DIR]

1. `git clone` of this repository's current commit into a temporary folder.
2. `make setup` once there (its own new .venv; pip needs the network), timed apart.
3. `make demo` `--runs` times, each with every cache empty (`SAEDOCTOR_CACHE`, `HF_HOME`,
   `HF_DATASETS_CACHE`, `XDG_CACHE_HOME` pointed at new folders), so each one converts the
   model, reads the default SAE shipped in the package and diagnoses it (loss recovered
   included), as a new user's first command does.
   stdout and stderr go to a log file; besides the wall time, the time at which the first
   line from saedoctor itself (not make's echo of the recipe) reached the log is recorded:
   how long a new user waits for a sign of life.
The report of the last run gives the headline metrics. Five runs by default. `--quick`: no
`make setup` (make skips it and runs the clone's code in this venv) and a `diagnose` cut to
a random SAE on a few tokens without loss recovered: a smoke run, not the first run.
Writes `<out>/first_run.json`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import _clone
import _proc
import _results
from _fixtures import random_default_shape_sae

NAME = "first_run"
DEFAULT_RUNS = _results.MIN_RUNS
FEWER_REASON = "each first run from empty caches takes minutes on 2 cores"
HEADLINE = ("loss_recovered", "variance_explained", "l0", "dead_pct", "always_on_count",
            "diversity_top10", "absorption")  # fmt: skip
QUICK_DIAGNOSE = ["--tokens", "2048", "--no-downstream"]


def demo_once(clone: Path, work: Path, run: int, make_args: list[str],
              echoes: set[str]) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """One `make demo` with empty caches: (timings, report)."""
    report_path = clone / "run.json"
    report_path.unlink(missing_ok=True)
    env = _clone.fresh_caches(work / f"caches-{run}")
    done = _proc.check(_proc.run_measured(["make", *make_args, "demo"], cwd=clone, env=env,
                                          log=work / f"demo-{run}.log"), "make demo")  # fmt: skip
    first = done.first_line(skip=("make:", "make[", *sorted(echoes)))
    report = json.loads(report_path.read_text())
    return {
        "wall_s": done.wall_s,
        "first_progress_s": first[0] if first else None,
        "first_progress_line": first[1] if first else None,
        "report_wall_time_s": report["run"].get("wall_time_s"),
        "peak_rss_mib": done.peak_rss_mib,
    }, report


def headline(report: dict[str, Any]) -> dict[str, Any]:
    (entry,) = report["saes"]
    grading = entry.get("grading") or {}
    return {
        "sae": entry["name"],
        "tokens_counted": report["run"].get("tokens_counted"),
        **{key: entry["metrics"].get(key) for key in HEADLINE},
        "grade": grading.get("grade"),
        "held_back_by": grading.get("held_back_by"),
    }


def main() -> None:
    started = time.time()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS)
    _results.add_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.runs = _results.QUICK_RUNS
    with tempfile.TemporaryDirectory(prefix="saedoctor-first-run-") as tmp:
        work = Path(tmp)
        clone = work / "clone"
        commit = _clone.clone_current_commit(clone)
        if args.quick:
            sae = random_default_shape_sae(work / "sae")
            cut = {"saedoctor": ["--sae", str(sae), *QUICK_DIAGNOSE]}
            shim = _clone.quick_bin(work / "bin", clone, cut)
            make_args, setup = _clone.quick_make_args(shim), None
        else:
            make_args = []
            setup = _clone.make_setup(clone, work / "setup.log").wall_s
            print(f"make setup: {setup:.0f} s", flush=True)
        echoes = _clone.recipe_echoes(clone, "demo", ["-o", "setup", *make_args])
        runs, report = [], {}
        for run in range(args.runs):
            timings, report = demo_once(clone, work, run, make_args, echoes)
            runs.append(timings)
            first = timings["first_progress_s"]
            shown = "no line" if first is None else f"{first:.1f} s"
            print(f"make demo run {run + 1}: {timings['wall_s']:.0f} s, first line from "
                  f"saedoctor after {shown}", flush=True)  # fmt: skip
    reason = _results.fewer_reason(args.runs, args.quick, FEWER_REASON)
    payload = {
        "clone_commit": commit,
        "setup_s_one_run": None if setup is None else round(setup, 1),
        "setup": "make setup (fresh .venv, pip)" if setup else "skipped: --quick",
        "demo_runs": args.runs,
        **{key: _results.timing([r[key] for r in runs], allow_fewer=reason)
           for key in ("wall_s", "first_progress_s", "report_wall_time_s", "peak_rss_mib")
           if all(r[key] is not None for r in runs)},
        "first_progress_lines": [r["first_progress_line"] for r in runs],
        "report": headline(report),
    }  # fmt: skip
    _results.write_result(NAME, payload, _results.out_dir(args), started, quick=args.quick)


if __name__ == "__main__":
    main()
