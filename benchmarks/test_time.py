"""Wall time of `make test` in a fresh clone with its own fresh venv, and what passed.

    .venv/bin/python benchmarks/test_time.py [--runs 3] [--quick] [--out DIR]

1. `git clone` of this repository's current commit into a temporary folder.
2. `make setup` there once (a new .venv; pip needs the network), timed apart.
3. `make test` `--runs` times (the whole suite, slow tests included), each timed, with the
   counts of pytest's summary line (passed, failed, skipped, errors, ...) and its exit code.
Three runs by default: the suite takes tens of minutes on 2 cores (the reason is recorded;
`--runs 5` for a median of five). `--quick`: no `make setup` (make skips it and runs the
clone's code in this venv) and pytest limited to tests/test_health_policy.py through
`PYTEST_ADDOPTS`: a smoke run of this script. Writes `<out>/test_time.json`.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import _clone
import _proc
import _results

NAME = "test_time"
DEFAULT_RUNS = 3
FEWER_REASON = "`make test` takes tens of minutes on 2 cores"
QUICK_TESTS = "tests/test_health_policy.py"
_SUMMARY = re.compile(r"(\d+) (passed|failed|skipped|xfailed|xpassed|errors?|deselected"
                      r"|warnings?)")  # fmt: skip
_FINAL = re.compile(r"\b\d+ (passed|failed|errors?)\b.* in [\d.]+s")


def pytest_counts(log_text: str) -> dict[str, int]:
    """Counts from pytest's final summary line ('3 failed, 120 passed, 2 skipped in 9.1s')."""
    finals = [line for line in log_text.splitlines() if _FINAL.search(line)]
    if not finals:
        return {}
    counts: dict[str, int] = {}
    for number, word in _SUMMARY.findall(finals[-1]):
        key = {"error": "errors", "warning": "warnings"}.get(word, word)
        counts[key] = counts.get(key, 0) + int(number)
    return counts


def make_test_once(
    clone: Path, log: Path, make_args: list[str], env: dict[str, str]
) -> dict[str, Any]:
    done = _proc.run_measured(["make", *make_args, "test"], cwd=clone, env=env, log=log)
    return {"wall_s": done.wall_s, "returncode": done.returncode,
            "counts": pytest_counts(done.text())}  # fmt: skip


def main() -> None:
    started = time.time()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS)
    _results.add_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.runs = _results.QUICK_RUNS
    env = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="saedoctor-test-time-") as tmp:
        work = Path(tmp)
        clone = work / "clone"
        commit = _clone.clone_current_commit(clone)
        if args.quick:
            shim = _clone.quick_bin(work / "bin", clone, {})
            make_args, setup = _clone.quick_make_args(shim), None
            env["PYTEST_ADDOPTS"] = QUICK_TESTS
        else:
            make_args = []
            setup = _clone.make_setup(clone, work / "setup.log").wall_s
            print(f"make setup: {setup:.0f} s", flush=True)
        runs = []
        for run in range(args.runs):
            runs.append(make_test_once(clone, work / f"test-{run}.log", make_args, env))
            print(f"make test run {run + 1}: {runs[-1]['wall_s']:.0f} s, exit "
                  f"{runs[-1]['returncode']}, {runs[-1]['counts']}", flush=True)  # fmt: skip
    reason = _results.fewer_reason(args.runs, args.quick, FEWER_REASON)
    payload = {
        "clone_commit": commit,
        "setup_s_one_run": None if setup is None else round(setup, 1),
        "setup": "make setup (fresh .venv, pip)" if setup else "skipped: --quick",
        "pytest_addopts": env.get("PYTEST_ADDOPTS"),
        "wall_s": _results.timing([r["wall_s"] for r in runs], allow_fewer=reason),
        "each_run": [{"returncode": r["returncode"], **r["counts"]} for r in runs],
        "last_run": {"returncode": runs[-1]["returncode"], **runs[-1]["counts"]},
        "all_passed": all(r["returncode"] == 0 for r in runs),
    }
    _results.write_result(NAME, payload, _results.out_dir(args), started, quick=args.quick)


if __name__ == "__main__":
    main()
