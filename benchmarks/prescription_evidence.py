"""Distil the prescription benchmark's verdicts into the evidence saedoctor ships.

    .venv/bin/python benchmarks/prescription_evidence.py [--results FILE] [--out FILE]

Reads `verdicts` of the committed result (benchmarks/prescriptions.py) and writes
`src/saedoctor/data/prescription_evidence.json`: per diagnosis id and prescription field the
verdict, targeted metric, paired difference, its 95 % interval, seed count and rank. The
arms that are not one prescription (`all`: the rule's changes together; `plan`: everything
`--from-prescription` applies) stay in the result file only. `tests/test_prescription_evidence.py`
fails when the shipped file is not the distillation of the committed result.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "prescriptions.json"
EVIDENCE = REPO / "src" / "saedoctor" / "data" / "prescription_evidence.json"
COMBINED_ARMS = ("all", "plan")
KEPT = ("verdict", "metric", "better", "delta", "interval", "seeds", "rank", "worse")


def distil(result: dict[str, Any]) -> dict[str, Any]:
    verdicts = {
        rule: {field: {k: v[k] for k in KEPT if k in v}
               for field, v in sorted(fields.items()) if field not in COMBINED_ARMS}
        for rule, fields in sorted(result["verdicts"].items())
    }  # fmt: skip
    return {
        "source": "benchmarks/results/prescriptions.json",
        "measured": {k: result.get(k) for k in ("date", "command", "complete", "seeds")},
        "verdicts": {rule: fields for rule, fields in verdicts.items() if fields},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--out", type=Path, default=EVIDENCE)
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    from saedoctor.atomic import atomic_write_json

    evidence = distil(json.loads(args.results.read_text()))
    atomic_write_json(args.out, evidence)
    print(f"wrote {args.out}: {sum(len(f) for f in evidence['verdicts'].values())} verdicts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
