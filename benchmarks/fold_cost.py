"""What `saedoctor filter --format circuit-tracer --fold` costs, and what it changes in a graph.

    .venv/bin/python benchmarks/fold_cost.py [--train-dir DIR | --train-tokens 20000]
        [--layers 30] [--tokens 2048] [--downstream-tokens 1024] [--prompt TEXT]
        [--max-feature-nodes 256] [--skip-graph] [--work DIR] [--quick] [--out DIR]

1. A JumpReLU transcoder at every block 0..`--layers`-1 of the default model, trained with
   `saedoctor train --kind transcoder --architecture jumprelu` (the helper of
   `circuit_tracer_agreement.py`), or read from `--train-dir` (its `circuit_tracer/` folder).
   Trained on few tokens they are dense (L0 ~1000) and have always-on features to fold.
2. `saedoctor diagnose` of the set (downstream on): per layer the reconstruction of the MLP
   output (FVU, error share) and each transcoder spliced in alone; for the set, every
   transcoder spliced in at once (CE / KL / loss recovered).
3. `saedoctor filter before.json --format circuit-tracer --out filter/ --fold`, then the same
   diagnosis of `filter/folded/` on the same tokens (same corpus, seed and counts: paired).
4. An attribution graph (circuit-tracer 0.5.0 in its own venv, `_circuit_tracer_worker.py
   attribute`) before and after the fold, same prompt and `--max-feature-nodes`: replacement
   and completeness scores, the error nodes' share of the influence, active features.

The fold's mean activations come from the first diagnosis, i.e. from the tokens the folded set
is then scored on (in-sample, as a user running diagnose -> filter --fold -> diagnose would
do). Wall times are single runs, recorded as such: not timing claims. Results:
`fold_cost.json` and `.md`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _circuit_tracer_env as ct_env  # noqa: E402
import _results  # noqa: E402
import circuit_tracer_agreement as cta  # noqa: E402

NAME = "fold_cost"
SAEDOCTOR = str(Path(sys.executable).with_name("saedoctor"))
ONE_RUN = "one run on a shared 2-core machine: a wall time for scale, not a timing claim"
# Per-layer metrics read from each report (the transcoder alone: its reconstruction of the
# MLP output, and its output spliced in with every other MLP left as it is).
LAYER_KEYS = ("always_on_count", "l0", "dead_pct", "variance_explained", "fvu", "error_share",
              "loss_recovered", "ce_sae", "kl_sae", "kl_score")  # fmt: skip
SET_KEYS = ("loss_recovered", "ce_clean", "ce_sae", "ce_ablated", "kl_score", "kl_sae",
            "kl_ablated", "downstream_tokens")  # fmt: skip
GRAPH_ROWS = (("replacement_score", ".4f"), ("completeness_score", ".4f"),
              ("error_influence_share", ".4f"), ("feature_influence_share", ".4f"),
              ("n_active_features", "d"), ("n_selected_features", "d"))  # fmt: skip
GRAPH_KEYS = ("n_tokens", "n_layers", "n_active_features", "n_selected_features",
              "n_error_nodes", "n_logits", "replacement_score", "completeness_score",
              "error_influence_share", "feature_influence_share")  # fmt: skip


# -- steps ----------------------------------------------------------------------------------
def run_logged(cmd: list[str], log: Path) -> float:
    """Run `cmd` with its output in `log`; its wall time. A failure shows the log's tail."""
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-4000:]
        raise SystemExit(f"{cmd[:2]} failed (exit {proc.returncode}):\n{tail}")
    return wall


def diagnose_cmd(args: argparse.Namespace, sae: Path, out: Path) -> list[str]:
    # --explain-tokens: the always-on explanations are text only (the fold reads densities and
    # mean activations from the main pass), so their extra pass is kept to one sequence.
    return [SAEDOCTOR, "diagnose", "--sae", str(sae), "--corpus", args.corpus,
            "--tokens", str(args.tokens), "--downstream-tokens", str(args.downstream_tokens),
            "--explain-tokens", str(args.context), "--context", str(args.context),
            "--seed", str(args.seed), "--downstream", "--quiet", "--out", str(out)]  # fmt: skip


def diagnose(args: argparse.Namespace, sae: Path, work: Path, label: str
             ) -> tuple[dict[str, Any], float]:  # fmt: skip
    out = work / f"{label}.json"
    print(f"diagnose {label}: {sae}", file=sys.stderr, flush=True)
    wall = run_logged(diagnose_cmd(args, sae, out), work / f"{label}.log")
    print(f"  {wall:.0f} s", file=sys.stderr, flush=True)
    return json.loads(out.read_text()), wall


def fold(report: Path, work: Path) -> tuple[Path, dict[str, Any], float]:
    out = work / "filter"
    cmd = [SAEDOCTOR, "filter", str(report), "--format", "circuit-tracer", "--out", str(out),
           "--fold"]  # fmt: skip
    wall = run_logged(cmd, work / "filter.log")
    return out / "folded", json.loads((out / "exclude.json").read_text()), wall


def graph(args: argparse.Namespace, directory: Path, work: Path, label: str) -> dict[str, Any]:
    from saedoctor.activations.model import ensure_default_cached

    out = work / f"graph_{label}.json"
    cmd = ["attribute", str(directory), "--model", str(ensure_default_cached()),
           "--prompt", args.prompt, "--out", str(out),
           "--max-feature-nodes", str(args.max_feature_nodes)]  # fmt: skip
    print(f"graph {label}: {directory}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    proc = ct_env.run_worker(cmd, check=False)
    wall = time.perf_counter() - start
    print(f"  {wall:.0f} s (exit {proc.returncode})", file=sys.stderr, flush=True)
    if proc.returncode != 0:
        return {"ran": False, "why": proc.stderr[-3000:], "worker_wall_s": _one(wall)}
    result = json.loads(out.read_text())
    return {"ran": True, **{k: result[k] for k in GRAPH_KEYS},
            **{k: _one(result[k]) for k in ("load_s", "attribute_s", "scores_s")},
            "worker_wall_s": _one(wall)}  # fmt: skip


def _one(seconds: float) -> dict[str, Any]:
    return _results.timing([seconds], allow_fewer=ONE_RUN, digits=1)


# -- reading the reports --------------------------------------------------------------------
def per_layer(report: dict[str, Any]) -> dict[int, dict[str, Any]]:
    out = {}
    for entry in report["saes"]:
        if (entry.get("config") or {}).get("kind") != "transcoder":
            continue
        metrics = entry.get("metrics") or {}
        out[entry["site"]["layer"]] = {k: metrics.get(k) for k in LAYER_KEYS}
    return dict(sorted(out.items()))


def whole_set(report: dict[str, Any]) -> dict[str, Any]:
    metrics = (report.get("transcoder_set") or {}).get("metrics") or {}
    return {k: metrics.get(k) for k in SET_KEYS}


def delta(after: Any, before: Any) -> float | None:
    ok = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (after, before))
    return after - before if ok else None


def compare(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    return {"before": before, "after": after,
            "delta": {k: delta(after.get(k), before.get(k)) for k in before}}  # fmt: skip


def layers_table(before: dict[int, dict[str, Any]], after: dict[int, dict[str, Any]],
                 folded: dict[int, int]) -> dict[str, Any]:  # fmt: skip
    rows = {str(layer): {"folded": folded.get(layer, 0), **compare(before[layer], after[layer])}
            for layer in before}  # fmt: skip
    # Means over layers (each layer weighs the same; error share and FVU are per-layer ratios).
    summary = {}
    for key in ("fvu", "error_share", "variance_explained", "l0", "loss_recovered"):
        b = [before[i][key] for i in before if before[i][key] is not None]
        a = [after[i][key] for i in after if after[i][key] is not None]
        if b and a and len(a) == len(b):
            stats_b = {"mean": statistics.fmean(b), "median": statistics.median(b)}
            stats_a = {"mean": statistics.fmean(a), "median": statistics.median(a)}
            summary[key] = compare(stats_b, stats_a)
    worst = max(rows, key=lambda layer: rows[layer]["delta"].get("fvu") or float("-inf"))
    return {"rows": rows, "mean_over_layers": summary, "largest_fvu_increase_layer": int(worst)}


# -- report ---------------------------------------------------------------------------------
def _f(value: Any, spec: str = ".4f") -> str:
    return "—" if value is None else format(value, spec)


def _pair(block: dict[str, Any], key: str, spec: str = ".4f") -> list[str]:
    b, a, d = block["before"].get(key), block["after"].get(key), block["delta"].get(key)
    return [_f(b, spec), _f(a, spec), "—" if d is None else format(d, "+" + spec)]


def markdown(payload: dict[str, Any]) -> str:
    s = payload["set"]
    lines = [f"# The fold's cost ({payload['n_layers']} JumpReLU transcoders, "
             f"{payload['features_folded']} always-on features folded)", "",
             f"Diagnosed on {payload['tokens']} tokens of {payload['corpus']} (spliced CE / KL "
             f"on the first {payload['downstream_tokens']}), the same tokens before and after.",
             "", "## Every transcoder spliced in at once", "",
             "| metric | before | after fold | change |", "|---|---|---|---|"]  # fmt: skip
    for key in ("loss_recovered", "ce_clean", "ce_sae", "ce_ablated", "kl_sae", "kl_score"):
        lines.append(f"| {key} | " + " | ".join(_pair(s, key)) + " |")
    m = payload["layers"]["mean_over_layers"]
    lines += ["", "## Per layer (mean over layers)", "",
              "| metric | before | after fold | change |", "|---|---|---|---|"]  # fmt: skip
    for key in ("fvu", "error_share", "l0", "loss_recovered"):
        if key in m:
            row = {k: {"mean": m[key][k]["mean"]} for k in ("before", "after", "delta")}
            lines.append(f"| {key} | " + " | ".join(_pair(row, "mean")) + " |")
    lines += ["", "| layer | folded | FVU before | FVU after | error share before | "
              "error share after | loss rec. alone before | after |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for layer, r in payload["layers"]["rows"].items():
        b, a = r["before"], r["after"]
        lines.append(f"| {layer} | {r['folded']} | {_f(b['fvu'])} | {_f(a['fvu'])} | "
                     f"{_f(b['error_share'])} | {_f(a['error_share'])} | "
                     f"{_f(b['loss_recovered'])} | {_f(a['loss_recovered'])} |")  # fmt: skip
    g = payload.get("graph")
    if g:
        lines += ["", f"## Attribution graph (circuit-tracer, prompt {g['prompt']!r}, "
                  f"max {g['max_feature_nodes']} feature nodes)", ""]  # fmt: skip
        if g["before"].get("ran") and g["after"].get("ran"):
            lines += ["| | before | after fold | change |", "|---|---|---|---|"]
            for key, spec in GRAPH_ROWS:
                lines.append(f"| {key} | " + " | ".join(_pair(g, key, spec)) + " |")
            lines.append("| attribute wall s (one run) | "
                         f"{g['before']['attribute_s']['median']:.0f} | "
                         f"{g['after']['attribute_s']['median']:.0f} | |")  # fmt: skip
        else:
            lines += [f"Did not run: {g['before'].get('why') or g['after'].get('why')}"]
    lines += ["", f"Wall times are single runs ({ONE_RUN})."]
    return "\n".join(lines) + "\n"


def scale_note(args: argparse.Namespace) -> str:
    return (f"sizes kept small for a shared 2-core machine: {args.tokens} tokens diagnosed, "
            f"spliced CE / KL on the first {args.downstream_tokens} (each such batch costs "
            "a forward per transcoder spliced alone, one per MLP zero-ablated and two for the "
            f"whole set), graphs capped at {args.max_feature_nodes} feature nodes "
            "(circuit_tracer_agreement.py's graph: 2048 nodes, 1719 s alone)")  # fmt: skip


# -- main -----------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=30, help="blocks 0..N-1 (the graph needs all)")
    p.add_argument("--train-tokens", type=int, default=20000)
    p.add_argument("--train-dir", type=Path, default=None,
                   help="a `saedoctor train --kind transcoder` output to use instead of training"
                   )  # fmt: skip
    p.add_argument("--corpus", default="python-docs@test")
    p.add_argument("--tokens", type=int, default=2048)
    # Spliced CE / KL costs, per batch, one forward per layer spliced alone, one per layer
    # zero-ablated and two for the whole set: most of a diagnosis on a CPU.
    p.add_argument("--downstream-tokens", type=int, default=1024)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt", default=cta.DEFAULT_PROMPT)
    p.add_argument("--max-feature-nodes", type=int, default=256)
    p.add_argument("--skip-graph", action="store_true")
    p.add_argument("--work", type=Path, default=None,
                   help="keep the reports, folded set and graphs here (default: a temp folder)"
                   )  # fmt: skip
    _results.add_arguments(p)
    args = p.parse_args()
    if args.quick:
        # circuit-tracer needs a transcoder at every block: the quick run has no graph.
        args.layers, args.train_tokens, args.skip_graph = 2, 2048, True
        args.tokens, args.downstream_tokens = 512, 256
    return args


def main() -> int:
    started = time.time()
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="fold-cost-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        payload = run(args, work)
    _results.write_result(NAME, payload, _results.out_dir(args), started, quick=args.quick,
                          markdown=markdown(payload))  # fmt: skip
    print(markdown(payload))
    return 0


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    train_s = None
    if args.train_dir is not None:
        transcoders = args.train_dir / "circuit_tracer"
    else:
        print(f"training {args.layers} transcoders", file=sys.stderr, flush=True)
        transcoders, train_s = cta.train_transcoders(args.layers, args.train_tokens,
                                                     work / "trained")  # fmt: skip
    n_layers = len(list(transcoders.glob("layer_*.safetensors")))
    train_file = transcoders.parent / "train.json"
    train_run = json.loads(train_file.read_text()) if train_file.is_file() else None

    before, before_s = diagnose(args, transcoders, work, "before")
    folded_dir, exclusions, filter_s = fold(work / "before.json", work)
    after, after_s = diagnose(args, folded_dir, work, "after")
    folded = {int(k): len(v) for k, v in exclusions["folded"]["layers"].items()}

    payload: dict[str, Any] = {
        "transcoders": str(transcoders), "n_layers": n_layers,
        "train_tokens": (train_run or {}).get("tokens", args.train_tokens),
        "train_run": cta._brief_run(train_run),
        "train_s": None if train_s is None else _one(train_s),
        "corpus": args.corpus, "tokens": args.tokens, "downstream_tokens": args.downstream_tokens,
        "context": args.context, "seed": args.seed,
        "tokens_counted": before["run"].get("tokens_counted"),
        "same_tokens": before["run"].get("tokens_counted") == after["run"].get("tokens_counted"),
        "threshold": exclusions["threshold"],
        "features_folded": sum(folded.values()),
        "folded_per_layer": {str(k): v for k, v in sorted(folded.items())},
        "commands": {
            "diagnose": " ".join(diagnose_cmd(args, Path("SET"), Path("before.json"))[1:]),
            "filter": "filter before.json --format circuit-tracer --out filter --fold",
            "diagnose_folded": " ".join(diagnose_cmd(args, Path("filter/folded"),
                                                     Path("after.json"))[1:]),
        },  # fmt: skip
        "set": compare(whole_set(before), whole_set(after)),
        "layers": layers_table(per_layer(before), per_layer(after), folded),
        "wall_s": {"diagnose_before": _one(before_s), "filter_fold": _one(filter_s),
                   "diagnose_after": _one(after_s)},  # fmt: skip
        "notes": [
            "the fold's mean activations are measured on the same tokens the folded set is "
            "scored on (diagnose -> filter --fold -> diagnose, as a user runs it)",
            "per-layer metrics are each transcoder alone (clean MLP input); `set` is every "
            "transcoder spliced in at once, each reading the stream the ones below changed",
            scale_note(args),
        ],
    }  # fmt: skip
    if not args.skip_graph:
        g_before = graph(args, transcoders, work, "before")
        g_after = graph(args, folded_dir, work, "after")
        payload["graph"] = {"prompt": args.prompt, "max_feature_nodes": args.max_feature_nodes,
                            **compare(g_before, g_after)}  # fmt: skip
        payload["graph"]["delta"] = {k: delta(g_after.get(k), g_before.get(k))
                                     for k in GRAPH_KEYS}  # fmt: skip
        payload["peer_versions"] = ct_env.peer_versions(ct_env.ensure_env())
    return payload


if __name__ == "__main__":
    sys.exit(main())
