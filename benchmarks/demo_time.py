"""`saedoctor demo` end to end: wall time over several runs, and the last run's layer table.

    .venv/bin/python benchmarks/demo_time.py [--runs 5] [--quick] [--out DIR]

Each run is `saedoctor demo --out <new folder>` in a child process: a fresh output folder,
so nothing trained before is reused (the converted model in saedoctor's cache is: add the
first load, benchmarks/model_load.py, for a new user). Recorded per run: wall time, peak
RSS, and the training / diagnosis split the demo prints (`train N s, diagnose M s`); each as
the median of `--runs` with min and max. From the last run's `run.json`, per layer: loss
recovered, variance explained, L0, dead %, always-on count, diversity and grade (`layers`,
keyed by block), and the sweep's best layer. About 15 minutes a run on 2 cores.
`--quick`: two layers, a few thousand tokens. Writes `<out>/demo_time.json`.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _proc
import _results

NAME = "demo_time"
QUICK_ARGS = ["--tokens", "4096", "--eval-tokens", "2048", "--layers", "4,10"]
LAYER_METRICS = ("loss_recovered", "variance_explained", "l0", "dead_pct", "always_on_count",
                 "diversity_top10")  # fmt: skip
_SPLIT = re.compile(r"train (\d+) s, diagnose (\d+) s")


def demo_once(work: Path, run: int, extra: list[str]) -> tuple[dict[str, float], dict]:
    """One `saedoctor demo` into a new folder: (timings, its report)."""
    out = work / f"run-{run}"
    cmd = [sys.executable, "-m", "saedoctor", "demo", "--out", str(out), *extra]
    done = _proc.check(_proc.run_measured(cmd, log=work / f"demo-{run}.log"), "saedoctor demo")
    split = _SPLIT.search(done.text())
    report = json.loads((out / "run.json").read_text())
    shutil.rmtree(out / "saes", ignore_errors=True)  # five SAEs and a checkpoint per run
    timings = {"wall_s": done.wall_s, "peak_rss_mib": done.peak_rss_mib,
               "train_s": float(split[1]) if split else None,
               "diagnose_s": float(split[2]) if split else None}  # fmt: skip
    return timings, report


def layers(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per block: the figures of the guide's layer table."""
    out = {}
    for entry in report["saes"]:
        row = {key: entry["metrics"].get(key) for key in LAYER_METRICS}
        row["grade"] = (entry.get("grading") or {}).get("grade")
        row["held_back_by"] = (entry.get("grading") or {}).get("held_back_by")
        # each figure's 95 % interval (docs/metrics.md), where the report gives one
        intervals = (entry.get("intervals") or {}).get("metrics") or {}
        row["intervals"] = {key: intervals.get(key) for key in LAYER_METRICS}
        out[str(entry["site"]["layer"])] = row
    return out


def main() -> None:
    started = time.time()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=_results.MIN_RUNS)
    _results.add_arguments(parser)
    args = parser.parse_args()
    extra = QUICK_ARGS if args.quick else []
    if args.quick:
        args.runs = _results.QUICK_RUNS
    runs, report = [], {}
    with tempfile.TemporaryDirectory(prefix="saedoctor-demo-time-") as tmp:
        for run in range(args.runs):
            timings, report = demo_once(Path(tmp), run, extra)
            runs.append(timings)
            print(f"demo run {run + 1}: {timings['wall_s']:.0f} s (train {timings['train_s']} "
                  f"s, diagnose {timings['diagnose_s']} s)", flush=True)  # fmt: skip
    reason = _results.fewer_reason(args.runs, args.quick)
    payload = {
        "demo_command": "saedoctor demo " + " ".join(extra),
        "diagnose_options": {k: v for k, v in (report["run"].get("options") or {}).items()
                             if k != "saes"},  # fmt: skip
        "tokens_counted": report["run"].get("tokens_counted"),
        **{key: _results.timing([r[key] for r in runs], allow_fewer=reason)
           for key in ("wall_s", "train_s", "diagnose_s", "peak_rss_mib")
           if all(r[key] is not None for r in runs)},
        "layers": layers(report),
        "best_layer": (report.get("sweep") or {}).get("best"),
    }  # fmt: skip
    _results.write_result(NAME, payload, _results.out_dir(args), started, quick=args.quick)


if __name__ == "__main__":
    main()
