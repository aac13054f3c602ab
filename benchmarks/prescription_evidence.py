"""Distil the prescription benchmark's verdicts into the evidence saedoctor ships.

    .venv/bin/python benchmarks/prescription_evidence.py [--results FILE] [--out FILE]

Reads `verdicts` of the committed result (benchmarks/prescriptions.py) and writes
`src/saedoctor/data/prescription_evidence.json`: per diagnosis id and prescription field the
verdict, targeted metric, paired difference, its 95 % interval, seed count and rank (see
`distil`). Arms that are not one prescription (`all`: the rule's changes together; `plan`:
everything `--from-prescription` applies) stay in the result file only.
`tests/test_prescription_evidence.py` fails when the shipped file is not the distillation
of the committed result.
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
KEPT = ("verdict", "metric", "better", "delta", "interval", "seeds", "effect", "worse", "case")
# Worst first: a change counts as helping only if it helped wherever it was measured.
SEVERITY = ("hurt", "no effect", "helped")


def distil(result: dict[str, Any]) -> dict[str, Any]:
    """Per rule, one verdict per prescribed field: from its single-change arms (not `all` or
    `plan`), on cases whose baseline had the problem on every seed (the rule fired on all of
    them: a change cannot be judged against a baseline that is mostly healthy). Ranks follow
    the measured effect, largest first."""
    verdicts: dict[str, dict[str, Any]] = {}
    for rule, arms in sorted(result["verdicts"].items()):
        found: dict[str, dict[str, Any]] = {}
        for arm in arms.values():
            field = single_field(arm)
            if field is None or not fired_on_every_seed(result, arm["case"], rule):
                continue
            kept = {k: arm[k] for k in KEPT if k in arm}
            if field not in found or worse(kept, found[field]):
                found[field] = kept
        ranked = sorted(found.items(), key=lambda kv: (SEVERITY.index(kv[1]["verdict"]) * -1,
                                                       -float(kv[1].get("effect") or 0)))
        if ranked:
            verdicts[rule] = {f: {**v, "rank": i + 1} for i, (f, v) in enumerate(ranked)}
    return {
        "source": "benchmarks/results/prescriptions.json",
        "measured": {k: result.get(k) for k in ("date", "command", "complete", "seeds")},
        "verdicts": verdicts,
    }


def single_field(arm: dict[str, Any]) -> str | None:
    """The one prescription an arm tried (prescribed today or retired after it was measured),
    or None (combined arms, changes no rule prescribed)."""
    change = arm.get("change") or {}
    measured = arm.get("prescribed") or arm.get("retired")
    return next(iter(change)) if measured and len(change) == 1 else None


def fired_on_every_seed(result: dict[str, Any], case: str, rule: str) -> bool:
    seeds = (result["cases"].get(case) or {}).get("seeds") or []
    return bool(seeds) and all(rule in s["fired"] for s in seeds)


def worse(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return SEVERITY.index(a["verdict"]) < SEVERITY.index(b["verdict"])


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
