"""Peak memory of `saedoctor diagnose` does not grow with the number of tokens streamed.

    nice -n 19 .venv/bin/python benchmarks/diagnose_memory.py [--small 100000] [--large 1000000]
        [--quick] [--out DIR]

Each run is `saedoctor diagnose --no-downstream` on the embedded default model and its
default SAE (a random SAE of the same shape when the default is not cached yet: memory
depends on the shapes, not on the weights), on `python-code@train` (the stdlib's source,
millions of tokens, so the large run really streams them). Each diagnosis runs in its own
child process; its peak resident set size is the `ru_maxrss` that `wait4` reports for that
child, so one run's peak never masks another's. Prints both peaks and their ratio (target:
within 10 %) and writes `<out>/diagnose_memory.json`. One run per size: the peak is a
property of the shapes, not a timing (each run's wall time is recorded for reference only).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import _proc
import _results
from _fixtures import default_or_random_sae

NAME = "diagnose_memory"
CORPUS = "python-code@train"
TARGET = 1.10
QUICK_SMALL, QUICK_LARGE = 2_000, 8_000


def peak_rss_mib(tokens: int, sae: Path, workdir: Path) -> tuple[float, float]:
    report_path = workdir / f"run-{tokens}.json"
    command = [sys.executable, "-m", "saedoctor", "diagnose", "--quiet", "--no-downstream",
               "--corpus", CORPUS, "--tokens", str(tokens), "--sae", str(sae),
               "--out", str(report_path)]  # fmt: skip
    done = _proc.check(_proc.run_measured(command, log=workdir / f"run-{tokens}.log"),
                       f"diagnose --tokens {tokens}")  # fmt: skip
    report = json.loads(report_path.read_text())
    if report["run"]["tokens_processed"] < tokens:
        raise SystemExit(f"{CORPUS} ran out after {report['run']['tokens_processed']} tokens")
    return done.peak_rss_mib, done.wall_s


def main() -> None:
    started = time.time()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    _results.add_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.small, args.large = QUICK_SMALL, QUICK_LARGE
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        sae, sae_note = default_or_random_sae(workdir)
        runs = {}
        for tokens in (args.small, args.large):
            peak, seconds = peak_rss_mib(tokens, sae, workdir)
            runs[str(tokens)] = {
                "peak_rss_mib": round(peak, 1),
                "wall_s_one_run": round(seconds, 1),
            }
            print(f"{tokens:>10,} tokens: peak RSS {peak:8.1f} MiB ({seconds:.0f} s)", flush=True)
    ratio = runs[str(args.large)]["peak_rss_mib"] / runs[str(args.small)]["peak_rss_mib"]
    verdict = "ok" if ratio <= TARGET else "FAIL"
    print(f"ratio large/small: {ratio:.3f} (target <= {TARGET}): {verdict}")
    payload = {"corpus": CORPUS, "sae": sae_note, "downstream": False, "small": args.small,
               "large": args.large, "runs": runs, "ratio": round(ratio, 4), "target": TARGET,
               "ok": ratio <= TARGET}  # fmt: skip
    _results.write_result(NAME, payload, _results.out_dir(args), started, quick=args.quick)


if __name__ == "__main__":
    main()
