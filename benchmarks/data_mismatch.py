"""The training-data-mismatch diagnosis on the embedded default: prose SAE, code corpus.

    .venv/bin/python benchmarks/data_mismatch.py [--sae PATH] [--tokens N] [--quick] [--out DIR]

Runs `saedoctor diagnose --compare-corpus python-code@test` (main corpus: the default
`python-docs@test`) in a child process on the default SAE (trained on `python-docs@train`;
trained and cached first if it is not cached yet, which the result records) and reads from
its report (docs/report.md):
- `main` / `compare`: variance explained, loss recovered, diversity, L0, dead %, always-on on
  each corpus (the entry's `metrics` and its `corpus_comparison.metrics`);
- `intervals` (docs), `delta_intervals` and `verdicts` (code against docs, from the two
  corpora's intervals as independent samples), `density_jsd_interval`;
- `density_jsd` (bits), `alive_only_on_compare` / `alive_only_on_main` (the comparison's
  `appeared` / `disappeared` feature lists, counted);
- `diagnosis`: whether the `data_mismatch` rule fired, its severity, evidence and
  prescriptions, and `prescribed_dataset` (its `dataset` prescription, if any).
A metric outcome of one seeded run, not a timing. Writes `<out>/data_mismatch.json`.
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
from _fixtures import random_default_shape_sae

NAME = "data_mismatch"
COMPARE = "python-code@test"
METRICS = ("variance_explained", "loss_recovered", "diversity_top10", "l0", "dead_pct",
           "always_on_count")  # fmt: skip
QUICK_TOKENS = 2048


def diagnose_command(args: argparse.Namespace, sae: Path | None) -> list[str]:
    """The `saedoctor` arguments, without `--out` (the report goes to a temporary file)."""
    cmd = ["diagnose", "--compare-corpus", COMPARE, "--quiet"]
    if sae is not None:
        cmd += ["--sae", str(sae)]
    if args.tokens:
        cmd += ["--tokens", str(args.tokens)]
    if args.quick:
        cmd += ["--no-downstream"]
    return cmd


def extract(report: dict[str, Any]) -> dict[str, Any]:
    """The figures the README quotes, from the report of the one SAE."""
    (entry,) = report["saes"]
    comparison = entry.get("corpus_comparison") or {}
    compare_metrics = comparison.get("metrics") or {}
    found = next((d for d in entry.get("diagnoses") or [] if d["id"] == "data_mismatch"), None)
    prescribed = [p for p in (found or {}).get("prescriptions", []) if p["field"] == "dataset"]
    metadata = (entry.get("config") or {}).get("metadata") or {}
    return {
        "sae": {"name": entry["name"], "training_corpus": metadata.get("training_corpus"),
                "training_tokens": metadata.get("training_tokens")},
        "corpus": report["run"].get("corpus"),
        "compare_corpus": comparison.get("corpus"),
        "tokens_counted": {"main": report["run"].get("tokens_counted"),
                           "compare": comparison.get("tokens_counted")},
        "main": {key: entry["metrics"].get(key) for key in METRICS},
        "compare": {key: compare_metrics.get(key) for key in METRICS},
        "deltas": {key: (comparison.get("deltas") or {}).get(key) for key in METRICS},
        "density_jsd": comparison.get("density_jsd"),
        "density_jsd_interval": comparison.get("density_jsd_interval"),
        "intervals": {key: ((entry.get("intervals") or {}).get("metrics") or {}).get(key)
                      for key in METRICS},
        "delta_intervals": {key: (comparison.get("delta_intervals") or {}).get(key)
                            for key in METRICS},
        "verdicts": verdicts(comparison),
        "alive_only_on_compare": len(comparison.get("appeared") or []),
        "alive_only_on_main": len(comparison.get("disappeared") or []),
        "diagnosis": {
            "fired": found is not None,
            "severity": (found or {}).get("severity"),
            "title": (found or {}).get("title"),
            "evidence": (found or {}).get("evidence", []),
            "prescriptions": (found or {}).get("prescriptions", []),
        },
        "prescribed_dataset": prescribed[0]["new"] if prescribed else None,
        "grade": (entry.get("grading") or {}).get("grade"),
    }  # fmt: skip


def verdicts(comparison: dict[str, Any]) -> dict[str, str]:
    """code (B) against docs (A) per metric, from the two corpora's intervals (independent
    samples), in compare's words (report/significance.py)."""
    from saedoctor.report.significance import verdict

    out = {}
    for key in METRICS:
        delta = (comparison.get("deltas") or {}).get(key)
        interval = (comparison.get("delta_intervals") or {}).get(key)
        if delta is not None and interval:
            out[key] = verdict(key, delta, interval[0], interval[1], "docs", "code")
    return out


def main() -> None:
    started = time.time()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sae", type=Path, default=None, help="default: the embedded default")
    parser.add_argument("--tokens", type=int, default=None, help="default: diagnose's default")
    _results.add_arguments(parser)
    args = parser.parse_args()
    from saedoctor import defaults

    with tempfile.TemporaryDirectory(prefix="saedoctor-mismatch-") as tmp:
        work = Path(tmp)
        if args.quick:
            args.tokens = args.tokens or QUICK_TOKENS
            args.sae = args.sae or random_default_shape_sae(work / "sae")
        cached_before = (defaults.default_sae_dir() / "cfg.json").is_file()
        cli = diagnose_command(args, args.sae)
        print(f"saedoctor {shlex.join(cli)}", file=sys.stderr)
        command = [sys.executable, "-m", "saedoctor", *cli, "--out", str(work / "run.json")]
        done = _proc.check(_proc.run_measured(command, log=work / "diagnose.log"), "diagnose")
        report = json.loads((work / "run.json").read_text())
    payload = {
        "diagnose_command": "saedoctor " + shlex.join(cli),
        "sae_path": str(args.sae) if args.sae else "the embedded default SAE",
        "default_sae_cached_before": cached_before if args.sae is None else None,
        **extract(report),
        "wall_s_one_run": round(done.wall_s, 1),
    }
    d = payload["diagnosis"]
    print(f"variance explained {payload['main']['variance_explained']} → "
          f"{payload['compare']['variance_explained']}, JSD {payload['density_jsd']}, "
          f"alive only on code {payload['alive_only_on_compare']}, only on docs "
          f"{payload['alive_only_on_main']}; data_mismatch fired: {d['fired']} "
          f"({d['severity']}), prescribes dataset: {payload['prescribed_dataset']}")  # fmt: skip
    _results.write_result(NAME, payload, _results.out_dir(args), started, quick=args.quick)


if __name__ == "__main__":
    main()
