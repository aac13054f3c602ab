"""The result files behind every published figure: envelope, timing rule, alternation, writer.

Every benchmark writes `benchmarks/results/<name>.json` through `write_result`:

    {"benchmark": "metric_overhead",
     "machine":  {"cpu_model", "logical_cores", "usable_cores", "torch_threads",
                  "ram_total_gib", "os", "load_avg_1m_at_start"},   # no hostname
     "versions": {"python", "torch", "transformers", "saedoctor", "sae-lens",
                  "transformer-lens", "git_commit", "git_dirty"},
     "date": "2026-12-05T10:31:02+00:00",      # UTC, when the run started
     "duration_s": 412.3,                      # the whole script
     "command": ".venv/bin/python benchmarks/metric_overhead.py --repeats 5",
     "quick": false,                           # --quick smoke runs never land in results/
     ...the script's own payload (top-level keys)...}

A timing or throughput is a block `{"runs": [...], "median", "min", "max", "n"}` built by
`timing`: at least `MIN_RUNS` runs, or an explicit `allow_fewer=reason` that is recorded as
`fewer_runs_reason`. Competing variants are measured with `alternate` (A B A B ... after a
warm-up) so background load hits every side alike. Never best-of-N: the median.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
RESULTS_DIR = BENCHMARKS / "results"
MIN_RUNS = 5
QUICK_RUNS = 2  # what --quick smoke runs use (recorded as a reason, never published)
QUICK_REASON = "--quick smoke run (tiny sizes), not a published figure"
ENVELOPE_KEYS = ("benchmark", "machine", "versions", "date", "duration_s", "command", "quick")
PACKAGES = ("torch", "transformers", "saedoctor", "sae-lens", "transformer-lens")
# Thread settings change timings: they are part of the command that reproduces a run.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# Environment that changes what a run does, recorded in its command: thread counts, and CI
# (under it, a test whose peer or chromium is missing fails instead of skipping).
RECORDED_VARS = (*THREAD_VARS, "CI")


# -- the envelope ---------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    """The machine a run was measured on, without anything that names it (no hostname)."""
    import torch

    return {
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "ram_total_gib": _ram_total_gib(),
        "os": platform.platform(terse=False),
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_total_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def versions() -> dict[str, Any]:
    """Python, the packages that decide the numbers (None: not installed), and the git commit
    of the working tree with whether it had uncommitted changes."""
    out: dict[str, Any] = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    out["git_commit"], out["git_dirty"] = git_state(REPO)
    return out


def git_state(repo: Path) -> tuple[str | None, bool | None]:
    """(HEAD commit, working tree dirty?), or (None, None) outside a git checkout."""
    try:
        commit = _git(repo, "rev-parse", "HEAD")
        dirty = bool(_git(repo, "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return None, None
    return commit, dirty


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=True)  # fmt: skip
    return done.stdout.strip()


def command(argv: Sequence[str] | None = None) -> str:
    """The command line that reproduces this run, from the repository root."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).resolve()
    try:
        script_text = str(script.relative_to(REPO))
    except ValueError:
        script_text = argv[0]
    env = [f"{var}={os.environ[var]}" for var in RECORDED_VARS if var in os.environ]
    return shlex.join([*env, ".venv/bin/python", script_text, *argv[1:]])


def envelope(name: str, started: float, *, quick: bool, argv: Sequence[str] | None = None
             ) -> dict[str, Any]:  # fmt: skip
    """The common part of every result file; `started` is `time.time()` at the script's start."""
    return {
        "benchmark": name,
        "machine": machine(),
        "versions": versions(),
        "date": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.time() - started, 1),
        "command": command(argv),
        "quick": quick,
    }


# -- timings ---------------------------------------------------------------------------------
def timing(values: Sequence[float], *, allow_fewer: str | None = None,
           digits: int = 6) -> dict[str, Any]:  # fmt: skip
    """Runs with their median, min and max. Fewer than `MIN_RUNS` runs are refused unless
    `allow_fewer` says why (the reason is recorded in the block)."""
    runs = [float(v) for v in values]
    if not runs:
        raise ValueError("timing: no runs")
    if len(runs) < MIN_RUNS and not allow_fewer:
        raise ValueError(f"timing: {len(runs)} runs; at least {MIN_RUNS} are needed "
                         "(or pass allow_fewer=<reason>)")  # fmt: skip
    block: dict[str, Any] = {
        "runs": [round(v, digits) for v in runs],
        "median": round(statistics.median(runs), digits),
        "min": round(min(runs), digits),
        "max": round(max(runs), digits),
        "n": len(runs),
    }
    if len(runs) < MIN_RUNS:
        block["fewer_runs_reason"] = allow_fewer
    return block


def fewer_reason(runs: int, quick: bool, why: str | None = None) -> str | None:
    """The reason to record when a script is asked for fewer than `MIN_RUNS` runs."""
    if runs >= MIN_RUNS:
        return None
    if quick:
        return QUICK_REASON
    return why or f"{runs} runs asked for on the command line"


def timed(fn: Callable[[], object]) -> Callable[[], float]:
    """`fn` as a measurement: its wall time in seconds."""

    def run() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    return run


def alternate(fns: Mapping[str, Callable[[], float]], repeats: int, *, warmup: int = 1,
              on_run: Callable[[str, int, float], None] | None = None,
              ) -> dict[str, list[float]]:  # fmt: skip
    """Each variant's measurements (what its callable returns: wrap plain work in `timed`),
    the variants interleaved A B A B ... so that a change of background load hits them alike.
    `warmup` rounds run first and are not recorded (imports, allocator, page cache)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    runs: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats):
        for name, fn in fns.items():
            value = float(fn())
            runs[name].append(value)
            if on_run is not None:
                on_run(name, r + 1, value)
    return runs


def paired_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Round-by-round ratios of two alternated sides: each pair ran under the same load."""
    return [a / b for a, b in zip(numerators, denominators, strict=True)]


# -- where results go -------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`--quick` and `--out DIR`, the same in every benchmark."""
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: tiny sizes, 2 runs (recorded as such); writes to a "
                             "temporary folder unless --out says otherwise")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None,
                        help=f"folder for the result files (default {RESULTS_DIR.relative_to(REPO)}"
                             "/; with --quick, a temporary folder)")  # fmt: skip


def out_dir(args: argparse.Namespace) -> Path:
    """The folder this run writes to. Quick runs never write into benchmarks/results/."""
    if args.out is None:
        if args.quick:
            return Path(tempfile.gettempdir()) / "saedoctor-bench-quick"
        return RESULTS_DIR
    if args.quick and args.out.resolve() == RESULTS_DIR:
        raise SystemExit(f"--quick results do not go into {RESULTS_DIR}: pass another --out")
    return args.out


def write_result(name: str, payload: Mapping[str, Any], folder: Path, started: float, *,
                 quick: bool, markdown: str | None = None) -> Path:  # fmt: skip
    """`folder/<name>.json` (envelope + payload), and `folder/<name>.md` when given; both
    written atomically (a crash never leaves a half-written result)."""
    from saedoctor.atomic import atomic_write_bytes, atomic_write_json

    clash = sorted(set(payload) & set(ENVELOPE_KEYS))
    if clash:
        raise ValueError(f"payload keys {clash} would overwrite the envelope")
    document = {**envelope(name, started, quick=quick), **payload}
    path = atomic_write_json(folder / f"{name}.json", document)
    if markdown is not None:
        atomic_write_bytes(folder / f"{name}.md", markdown.encode())
    print(f"wrote {path}", file=sys.stderr)
    return path


# -- checking a result file -------------------------------------------------------------------
def timing_blocks(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every `{"runs": [...], "median": ...}` block in a document, with its key path."""
    if isinstance(node, dict):
        if "median" in node and isinstance(node.get("runs"), list):
            yield path, node
        for key, value in node.items():
            yield from timing_blocks(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from timing_blocks(value, f"{path}[{i}]")


def document_problems(document: Any) -> list[str]:
    """What keeps a result document from backing a published figure (empty: nothing)."""
    if not isinstance(document, dict):
        return ["not a JSON object"]
    required = ("machine", "versions", "date", "command")
    problems = [f"no {key!r} in the envelope" for key in required if key not in document]
    if document.get("quick"):
        problems.append("a --quick smoke run, not a measurement")
    for path, block in timing_blocks(document):
        n = len(block["runs"])
        if n < MIN_RUNS and not block.get("fewer_runs_reason"):
            problems.append(f"{path}: {n} runs (fewer than {MIN_RUNS}) and no fewer_runs_reason")
    return problems
