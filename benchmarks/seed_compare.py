"""Are two seeds of the embedded default different SAEs? A significance verdict per metric.

    .venv/bin/python benchmarks/seed_compare.py --seed-saes DIR DIR [--tokens N] [--quick]
        [--out DIR]

One `saedoctor diagnose` run (child process) on the default model with the shipped default
SAE (seed 0) and the given SAEs (trained with the same recorded command and other seeds:
`benchmarks/feature_match.py` trains them, or `saedoctor.train.default.build_default_sae`),
so every SAE is measured on the same tokens; then `compare`'s tests (report/significance.py)
of each seed against seed 0, paired over the same sequence blocks, and seed 0 against
itself (which must show no detectable difference). A metric outcome of one seeded run, not
a timing. Writes `<out>/seed_compare.json`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _proc
import _results

NAME = "seed_compare"
QUICK_TOKENS = 2048


def diagnose(saes: list[Path], tokens: int | None, quick: bool, work: Path) -> dict[str, Any]:
    cli = ["diagnose", "--quiet", "--preflight", "none",
           *[a for s in saes for a in ("--sae", str(s))]]
    if tokens:
        cli += ["--tokens", str(tokens)]
    if quick:
        cli += ["--no-downstream"]
    print(f"saedoctor {shlex.join(cli)}", file=sys.stderr)
    command = [sys.executable, "-m", "saedoctor", *cli, "--out", str(work / "run.json")]
    done = _proc.check(_proc.run_measured(command, log=work / "diagnose.log"), "diagnose")
    return {"cli": "saedoctor " + shlex.join(cli), "wall_s": done.wall_s,
            "report": json.loads((work / "run.json").read_text())}  # fmt: skip


def pairs(report: dict[str, Any], names: list[str]) -> list[dict[str, Any]]:
    from saedoctor.report.significance import compare_entries, short_verdict

    entries = report["saes"]
    baseline, out = entries[0], []
    for name, entry in [(names[0], baseline), *zip(names[1:], entries[1:], strict=True)]:
        tests = compare_entries(baseline, entry, names[0], name, same_tokens=True)
        out.append({"a": names[0], "b": name,
                    "tests": {t.metric: {**t.as_json(), "short": short_verdict(t.as_json())}
                              for t in tests}})  # fmt: skip
    return out


def main() -> None:
    started = time.time()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed-saes", type=Path, nargs="+", required=True)
    parser.add_argument("--tokens", type=int, default=None, help="default: diagnose's default")
    _results.add_arguments(parser)
    args = parser.parse_args()
    from saedoctor import defaults

    if args.quick:
        args.tokens = args.tokens or QUICK_TOKENS
    saes = [defaults.default_sae_dir(), *args.seed_saes]
    names = ["seed0", *[p.name for p in args.seed_saes]]
    with tempfile.TemporaryDirectory(prefix="saedoctor-seeds-") as tmp:
        run = diagnose(saes, args.tokens, args.quick, Path(tmp))
    report = run["report"]
    compared = pairs(report, names)
    metrics = {name: {k: e["metrics"].get(k) for k in ("variance_explained", "loss_recovered",
                                                          "l0", "dead_pct", "diversity_top10")}
               for name, e in zip(names, report["saes"], strict=True)}  # fmt: skip
    payload = {"diagnose_command": run["cli"], "saes": names,
               "tokens_counted": report["run"].get("tokens_counted"), "metrics": metrics,
               "pairs": compared, "wall_s_one_run": round(run["wall_s"], 1)}  # fmt: skip
    for pair in compared:
        verdicts = {k: t["short"] for k, t in pair["tests"].items()}
        print(f"{pair['b']} vs {pair['a']}: {verdicts}")
    _results.write_result(NAME, payload, _results.out_dir(args), started, quick=args.quick)


if __name__ == "__main__":
    main()
