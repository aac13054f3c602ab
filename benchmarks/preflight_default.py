"""The pre-flight checks on the embedded default, read at its own block and one block off.

    .venv/bin/python benchmarks/preflight_default.py [--tokens N] [--quick] [--out DIR]

Runs `saedoctor diagnose --layer L --no-downstream --tokens N` for L = 9, 10, 11 in a child
process each, on the default model and its default SAE (trained at block 10's
`resid_post`; no `--sae`: the package's default), and reads from each report the entry's
`preflight` block (measured on the corpus's first `--preflight-tokens` tokens, 512 by
default, before the main pass; docs/grading.md, Pre-flight checks) and the pre-flight
diagnoses. Per case (`cases["9"]`, `cases["10"]`, `cases["11"]`, keyed by the declared block):
- `site`: FVU at the declared site and at every other site tried (`fvu["<hook name>"]`), the
  best other site, `declared_over_best` (declared FVU / best other FVU), `gap` (declared −
  best other, `value` and its 95 % jackknife `interval`), and `nearest_other_over_declared`;
- `norm`: the FVU at every input scale scanned (`fvu_by_scale["<scale, 4 significant
  digits>"]` and the `scan` list), the best scale, the activations' mean norm and centred RMS
  norm, and the trainer's recorded norm (`recorded.norm`, `recorded.measured`, `recorded.ratio`
  = measured / recorded);
- `special`: BOS / EOS count, FVU and L0 with and without them, `fvu_shift`, FVU on them alone;
- `outliers`: γ = ‖μ‖/‖σ‖ of the input site, its parts, how the SAE's b_dec started;
- `fired`: the pre-flight diagnoses that fired (`diagnoses.<id>`: severity, title, evidence,
  prescriptions) and `named_site` (the `eval_site` prescription's site), and `announced`
  (the loud line printed before the main pass, if any).
A metric outcome of one seeded run per case (the pre-flight reads the corpus's first tokens:
deterministic), not a timing; `wall_s_one_run` is one run of each command (model load and a
short main pass included). Writes `<out>/preflight_default.json`.
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

NAME = "preflight_default"
TOKENS = 2048  # the main pass only has to run: the pre-flight reads its own 512 tokens
QUICK_TOKENS = 512
QUICK_PREFLIGHT_TOKENS = 128


def layers() -> list[int]:
    from saedoctor import defaults

    return [defaults.DEFAULT_LAYER + d for d in (-1, 0, 1)]


def diagnose_command(layer: int, args: argparse.Namespace) -> list[str]:
    """The `saedoctor` arguments for one case, without `--out`."""
    cmd = ["diagnose", "--layer", str(layer), "--no-downstream", "--tokens", str(args.tokens),
           "--quiet"]  # fmt: skip
    if args.quick:
        cmd += ["--preflight-tokens", str(QUICK_PREFLIGHT_TOKENS), "--explain-tokens",
                str(QUICK_TOKENS)]  # fmt: skip
    return cmd


def _fit(fit: dict[str, Any]) -> dict[str, Any]:
    return {"hook_name": fit["hook_name"], "fvu": fit["fvu"]}


def site_part(site: dict[str, Any]) -> dict[str, Any]:
    declared, candidates = site["declared"], site["candidates"]
    best = candidates[0] if candidates else None
    fvu = {declared["hook_name"]: declared["fvu"], **{c["hook_name"]: c["fvu"] for c in candidates}}
    return {
        "declared": _fit(declared),
        "fvu": fvu,
        "best_other": _fit(best) if best else None,
        "declared_over_best": declared["fvu"] / best["fvu"] if best else None,
        "nearest_other_over_declared": best["fvu"] / declared["fvu"] if best else None,
        "gap": site.get("gap"),
    }


def scale_key(scale: float) -> str:
    return f"{scale:.4g}"


def norm_part(norm: dict[str, Any]) -> dict[str, Any]:
    recorded = next((h for h in norm.get("hints") or [] if h.get("recorded")), None)
    part: dict[str, Any] = {
        "scan": norm["scan"],
        "fvu_by_scale": {scale_key(s["scale"]): s["fvu"] for s in norm["scan"]},
        "best": norm["best"],
        "at_one": norm["at_one"],
        "gap": norm.get("gap"),
        "mean_norm": norm["mean_norm"],
        "centred_rms": norm["centred_rms"],
        "hints": norm.get("hints") or [],
        "recorded": None,
    }
    if recorded is not None:
        statistic = "centred_rms" if recorded["statistic"] == "centred_rms" else "mean_norm"
        measured = norm[statistic]
        part["recorded"] = {"source": recorded["source"], "statistic": recorded["statistic"],
                            "norm": recorded["norm"], "measured": measured,
                            "ratio": measured / recorded["norm"]}  # fmt: skip
    return part


def special_part(special: dict[str, Any]) -> dict[str, Any]:
    return {**special, "fvu_shift": special["fvu_with"] - special["fvu_without"]}


def _diagnosis(found: dict[str, Any]) -> dict[str, Any]:
    keys = ("severity", "title", "evidence", "prescriptions")
    return {key: found.get(key) for key in keys}


def extract(report: dict[str, Any], log: str) -> dict[str, Any]:
    """The pre-flight figures of the one SAE's entry, and the pre-flight diagnoses."""
    (entry,) = report["saes"]
    pre = entry.get("preflight") or {}
    found = {d["id"]: d for d in entry.get("diagnoses") or [] if d["id"].startswith("preflight_")}
    site_rx = [p for d in found.values() for p in d.get("prescriptions", [])
               if p["field"] == "eval_site"]  # fmt: skip
    announced = [line.strip() for line in log.splitlines() if line.startswith("pre-flight")]
    return {
        "site_evaluated": (entry.get("site") or {}).get("hook_name"),
        "preflight_tokens": pre.get("tokens"),
        "checks": pre.get("checks"),
        "skipped": pre.get("skipped"),
        "site": site_part(pre["site"]) if pre.get("site") else None,
        "norm": norm_part(pre["norm"]) if pre.get("norm") else None,
        "special": special_part(pre["special"]) if pre.get("special") else None,
        "outliers": pre.get("outliers"),
        "fired": sorted(found),
        "diagnoses": {k: _diagnosis(d) for k, d in found.items()},
        "named_site": site_rx[0]["new"] if site_rx else None,
        "announced": announced,
        "grade": (entry.get("grading") or {}).get("grade"),
    }


def run_case(layer: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    cli = diagnose_command(layer, args)
    print(f"saedoctor {shlex.join(cli)}", file=sys.stderr)
    out = work / f"layer{layer}.json"
    command = [sys.executable, "-m", "saedoctor", *cli, "--out", str(out)]
    done = _proc.check(_proc.run_measured(command, log=work / f"layer{layer}.log"), "diagnose")
    report = json.loads(out.read_text())
    case = extract(report, done.text())
    return {"declared_layer": layer, "diagnose_command": "saedoctor " + shlex.join(cli), **case,
            "wall_s_one_run": round(done.wall_s, 1)}  # fmt: skip


def summary(layer: int, case: dict[str, Any]) -> str:
    site, norm, out = case["site"] or {}, case["norm"] or {}, case["outliers"] or {}
    best = site.get("best_other") or {}
    return (f"--layer {layer}: FVU {site.get('declared', {}).get('fvu')} declared, best other "
            f"{best.get('hook_name')} {best.get('fvu')} (gap {site.get('gap')}); best scale "
            f"{(norm.get('best') or {}).get('scale')}; γ {out.get('gamma')}; fired "
            f"{case['fired']} naming {case['named_site']}")  # fmt: skip


def main() -> None:
    started = time.time()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=None,
                        help=f"main-pass tokens (default {TOKENS}; the pre-flight reads its own)"
                        )  # fmt: skip
    _results.add_arguments(parser)
    args = parser.parse_args()
    args.tokens = args.tokens or (QUICK_TOKENS if args.quick else TOKENS)
    cases = {}
    with tempfile.TemporaryDirectory(prefix="saedoctor-preflight-") as tmp:
        for layer in layers():
            cases[str(layer)] = run_case(layer, args, Path(tmp))
            print(summary(layer, cases[str(layer)]), file=sys.stderr)
    payload = {
        "sae_path": "the embedded default SAE (declared site blocks.10.hook_resid_post)",
        "model": "the embedded default model",
        "corpus": "python-docs@test (diagnose's default)",
        "tokens": args.tokens,
        "cases": cases,
    }
    _results.write_result(NAME, payload, _results.out_dir(args), started, quick=args.quick)


if __name__ == "__main__":
    main()
