"""saedoctor side by side with SAELens (and SAEBench core) on the same SAEs, model and tokens.

    .venv/bin/python benchmarks/peer_agreement.py [--tokens 16384] [--layers 4,10,16,22,28]
        [--timing-tokens 4096] [--timing-runs 5] [--full-timing]
        [--quick] [--tl bridge|hooked] [--saebench-wheel PATH] [--train-tokens N] [--out DIR]

1. Builds one TopK SAE (576 -> 4608, k 32) per layer at `blocks.L.hook_resid_post` of the
   default model (random but sane: unit-norm decoder, W_enc = W_dec.T, b_dec = the mean
   activation; or, with --train-tokens, trained by saedoctor's quick trainer), saved with
   saedoctor's `save_sae` (SAELens 6 layout) under --cache-dir; both sides load these files.
2. saedoctor: ONE `diagnose` run for all the SAEs (one forward per batch for every site).
3. SAELens: `sae_lens.evals.run_evals` (its own evaluation: downstream CE / KL via
   `get_recons_loss`, then `get_sparsity_and_variance_metrics`) for each SAE, one after
   another, on the same token tensors (saedoctor's packing, replayed by a store stub) with
   `exclude_special_tokens` = {BOS, EOS, pad}: the positions saedoctor does not count.
   The model is the same local HF model wrapped by TransformerLens 3's TransformerBridge
   (bit-identical activations and logits; checked before timing) or, with --tl hooked, a
   classic HookedTransformer (float32-rounding agreement only).
4. SAEBench core (sae-bench 0.6.0) on the first layer's SAE, when importable (see --help).
5. Wall time: steps 2 and 3 again, alternately (saedoctor, SAELens, saedoctor, ...),
   `--timing-runs` times each on `--timing-tokens` tokens (4 096 by default, so the whole
   script stays near 20 minutes on 2 cores; `--full-timing` times at `--tokens`: about 45
   minutes). The agreement run of steps 2-3 is their warm-up and is not counted.

Both wall times include loading the language model (saedoctor's `diagnose` loads it
itself); the SAELens side tokenises once and reuses the batches for every SAE (in its
favour: an ActivationsStore would re-tokenise per SAE). The table lists every shared
metric (ours, theirs, relative difference) and the wall-time ratio SAELens / saedoctor
(median of the round-by-round ratios); results go to `<out>/peer_agreement.json` (largest
relative difference per metric over the layers under `max_rel_diff`) and the printed report
to `<out>/peer_agreement.txt`.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _peers  # noqa: E402
import _results  # noqa: E402
from saedoctor.sae.loaders import save_sae  # noqa: E402

TOLERANCE = 1e-4
TARGET_RATIO = 3.0
CORPUS = "python-docs@test"
MEAN_CORPUS = "python-docs@train"
NAME = "peer_agreement"
QUICK_TOKENS, QUICK_TIMING_TOKENS = 1024, 512
# SAEBench 0.6.0 core: variance uses (mean of x^2)^2 for ||mean x||^2; mse is also / batch tokens.
SAEBENCH_BUGS = ("variance_explained", "mse")
EXACT_KEYS = ("dead_count", "never_fired_count", "dense_count", "always_on_count")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=16384, help="evaluation tokens (default 16384)")
    p.add_argument("--layers", default="4,10,16,22,28", help="comma-separated resid_post layers")
    p.add_argument("--timing-tokens", type=int, default=4096,
                   help="tokens of each timed run (default 4096)")  # fmt: skip
    p.add_argument("--timing-runs", type=int, default=_results.MIN_RUNS,
                   help="alternating timed runs per side (default 5)")  # fmt: skip
    p.add_argument("--full-timing", action="store_true",
                   help="time at --tokens, not --timing-tokens (about 45 minutes)")  # fmt: skip
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--tl",
        choices=("bridge", "hooked"),
        default="bridge",
        help="TransformerLens wrapper for SAELens (default: TransformerBridge)",
    )
    p.add_argument(
        "--saebench-wheel",
        default=None,
        help="sae_bench-0.6.0 wheel (or unpacked folder) from `pip download "
        "--no-deps sae-bench==0.6.0`, used when sae_bench is not installed",
    )
    p.add_argument(
        "--saebench-layers",
        default=None,
        help="layers SAEBench core evaluates (default: the first; 'none' skips)",
    )
    p.add_argument(
        "--train-tokens",
        type=int,
        default=0,
        help="train the SAEs on this many python-docs@train tokens (default 0: random SAEs)",
    )
    p.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "saedoctor-peer"))
    _results.add_arguments(p)
    args = p.parse_args(argv)
    if args.quick:
        args.tokens = min(args.tokens, QUICK_TOKENS)
        args.timing_tokens = min(args.timing_tokens, QUICK_TIMING_TOKENS)
        args.timing_runs = _results.QUICK_RUNS
    if args.full_timing:
        args.timing_tokens = args.tokens
    args.layer_list = [int(x) for x in args.layers.split(",") if x.strip()]
    if args.saebench_layers is None:
        args.saebench_list = args.layer_list[:1]
    elif args.saebench_layers.strip().lower() == "none":
        args.saebench_list = []
    else:
        args.saebench_list = [int(x) for x in args.saebench_layers.split(",") if x.strip()]
    return args


# -- the SAEs -----------------------------------------------------------------------------
def build_saes(args: argparse.Namespace, hf_model: Any, tokenizer: Any) -> dict[int, Path]:
    """One SAE directory per layer, built once and cached under --cache-dir."""
    kind = f"trained{args.train_tokens}" if args.train_tokens else "random"
    root = Path(args.cache_dir) / kind
    paths = {layer: root / f"L{layer}" for layer in args.layer_list}
    todo = [layer for layer, p in paths.items() if not (p / "cfg.json").is_file()]
    if not todo:
        return paths
    print(f"building {kind} SAEs for layers {todo} in {root}", file=sys.stderr)
    if args.train_tokens:
        saes = train_saes(hf_model, tokenizer, todo, args.train_tokens)
    else:
        means = _peers.site_means(hf_model, tokenizer, todo, MEAN_CORPUS, 4096)
        saes = {
            layer: _peers.random_topk_sae(layer, means[layer], model_name="SmolLM2-135M-Instruct")
            for layer in todo
        }
    for layer, sae in saes.items():
        save_sae(sae, paths[layer])
    return paths


def train_saes(hf_model: Any, tokenizer: Any, layers: list[int], tokens: int) -> dict[int, Any]:
    """TopK SAEs (x8, k 32, AuxK 1/32) trained by saedoctor's own trainer on `tokens`
    activations per layer."""
    from saedoctor.activations.stream import site_batches
    from saedoctor.sae.site import Site
    from saedoctor.train.config import TrainConfig
    from saedoctor.train.trainer import train_on_activations

    sites = [Site(layer) for layer in layers]
    acts: dict[Site, list[torch.Tensor]] = {s: [] for s in sites}
    batches = _peers.eval_token_batches(tokenizer, MEAN_CORPUS, tokens, 128, 8)
    for sb in site_batches(hf_model, sites, batches):
        for s in sites:
            acts[s].append(sb.acts[s])
    out = {}
    for s in sites:
        x = torch.cat(acts.pop(s)).float()
        cfg = TrainConfig(layers=[s.layer], expansion_factor=8, top_k=32, auxk_alpha=1 / 32,
                          training_tokens=x.shape[0], checkpoint_every=0)  # fmt: skip
        (sae,) = train_on_activations(cfg, x, corpus=MEAN_CORPUS).saes.values()
        sae.cfg.model_name = "SmolLM2-135M-Instruct"
        out[s.layer] = sae
    return out


# -- the two runs -------------------------------------------------------------------------
def run_saedoctor(
    args: argparse.Namespace, paths: dict[int, Path], tokens: int | None = None
) -> tuple[dict, float]:
    from saedoctor.diagnose import DiagnoseOptions, diagnose

    opts = DiagnoseOptions(
        saes=[str(paths[layer]) for layer in args.layer_list],
        corpus=CORPUS,
        tokens=tokens or args.tokens,
        context=args.context,
        batch_size=args.batch_size,
        quiet=True,
    )
    start = time.perf_counter()
    report = diagnose(opts)
    return report, time.perf_counter() - start


def run_saelens(
    args: argparse.Namespace, paths: dict[int, Path], model_dir: Path, tokens: int | None = None
) -> tuple[dict[int, _peers.PeerResult], float, float, Any, _peers.TokenStore, list[int]]:
    start = time.perf_counter()
    hf_model, tokenizer = _peers.load_hf(model_dir)
    tl_model = _peers.wrap_model(args.tl, hf_model, tokenizer, model_dir)
    load_s = time.perf_counter() - start
    batches = _peers.eval_token_batches(
        tokenizer, CORPUS, tokens or args.tokens, args.context, args.batch_size
    )
    store = _peers.TokenStore.from_token_batches(batches)
    ignore = _peers.special_token_ids(tokenizer)
    results = {}
    for layer in args.layer_list:
        t = time.perf_counter()
        results[layer] = _peers.saelens_evaluate(paths[layer], tl_model, store, ignore)
        print(f"  SAELens L{layer}: {time.perf_counter() - t:.1f} s", file=sys.stderr)
    return results, time.perf_counter() - start, load_s, tl_model, store, ignore


# -- the table ----------------------------------------------------------------------------
def compare(
    ours: dict[str, Any], density: list[float], peer: _peers.PeerResult, bugs: tuple = ()
) -> dict:
    tokens = ours.get("tokens_seen")
    rows = {}
    for key in (*_peers.SAELENS_KEYS, *EXACT_KEYS):
        a, b = ours.get(key), peer.metrics.get(key)
        rel = _peers.rel_diff(a, b)
        if key in EXACT_KEYS:
            status = "ok" if a == b else "DIFF"
        elif a is None and key in _peers.DOWNSTREAM_KEYS:
            status = "not in report"
        elif rel is None:
            status = "n/a"
        elif key in _peers.DEFINITION_NOTES:
            status = "def"
        elif key in bugs:
            status = "peer bug"
        else:
            status = "ok" if rel <= TOLERANCE else "DIFF"
        rows[key] = {"ours": a, "theirs": b, "rel_diff": rel, "status": status}
    dd = _peers.density_diff(density, peer.density, tokens)
    ok = dd["max_rel"] <= TOLERANCE
    rows["density[]"] = {
        "ours": None,
        "theirs": None,
        "rel_diff": dd["max_rel"],
        "status": "ok" if ok else "DIFF",
        **dd,
    }
    return rows


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return f"{v:.6g}"


def print_table(title: str, per_layer: dict[int, dict]) -> None:
    print(f"\n{title}")
    print(f"{'metric':<30}{'layer':>6}{'saedoctor':>16}{'peer':>16}{'rel diff':>11}  status")
    keys = next(iter(per_layer.values())).keys()
    for key in keys:
        for layer, rows in per_layer.items():
            r = rows[key]
            rel = "-" if r["rel_diff"] is None else f"{r['rel_diff']:.1e}"
            print(
                f"{key:<30}{layer:>6}{fmt(r['ours']):>16}{fmt(r['theirs']):>16}{rel:>11}"
                f"  {r['status']}"
            )
    notes = [f"  def: {k}: peer = {v}" for k, v in _peers.DEFINITION_NOTES.items()]
    print(
        "\n".join(
            [
                "  density[]: max relative difference over features (per-feature firing)",
                "  mse: both sides = mean over tokens of ||x - x_hat||^2 (sum over d_in)",
                *notes,
            ]
        )
    )


def audit_density(
    args: argparse.Namespace,
    paths: dict[int, Path],
    tl_model: Any,
    ref_model: Any,
    per_layer: dict[int, dict],
    entries: dict[str, dict],
    model_dir: Path,
) -> dict[int, dict[str, int]]:
    """For layers whose density vectors differ: is it the metric code or the inputs?"""
    layers = [layer for layer, rows in per_layer.items() if rows["density[]"]["status"] == "DIFF"]
    if not layers:
        return {}
    print(f"auditing density differences at layers {layers} ...", file=sys.stderr)
    tokenizer = tl_model.tokenizer
    batches = _peers.eval_token_batches(
        tokenizer, CORPUS, args.tokens, args.context, args.batch_size
    )
    density = {layer: entries[paths[layer].name]["feature_density"] for layer in layers}
    return _peers.topk_flip_audit(
        {la: paths[la] for la in layers}, tl_model, ref_model, batches, density
    )


def print_audit(audit: dict[int, dict[str, int]], tl: str) -> None:
    for layer, a in audit.items():
        print(
            f"  density[] L{layer}: SAELens's SAE on saedoctor's activations -> "
            f"{a['counts_differ_from_saedoctor']} feature counts differ from saedoctor; "
            f"TL ({tl}, eager attention) vs HF (sdpa) activations -> "
            f"{a['tokens_with_other_topk']} token(s) with another top-k set, "
            f"{a['counts_differ_between_inputs']} feature counts differ"
        )


def saebench_side(
    args: argparse.Namespace, paths: dict[int, Path], tl_model: Any, store: Any, ignore: list
) -> tuple[dict[int, _peers.PeerResult], str | None]:
    if not args.saebench_list:
        return {}, "SAEBench core skipped (--saebench-layers none)"
    core = _peers.import_saebench_core(args.saebench_wheel)
    if core is None:
        return {}, _peers.saebench_hint()
    out = {}
    for layer in args.saebench_list:
        out[layer] = _peers.saebench_evaluate(core, paths[layer], tl_model, store, ignore)
    return out, None


def main(argv: list[str] | None = None) -> int:
    started = time.time()
    args = parse_args(argv)
    out = _results.out_dir(args)
    _peers.offline()
    torch.manual_seed(0)
    model_dir = _peers.default_model_dir()
    ref_model, tokenizer = _peers.load_hf(model_dir)  # an HF model no wrapper touches
    paths = build_saes(args, ref_model, tokenizer)
    printed = io.StringIO()
    with contextlib.redirect_stdout(_Tee(sys.stdout, printed)):
        payload = agreement(args, paths, model_dir, ref_model)
        del ref_model
        payload["wall_time"] = time_both(args, paths, model_dir)
        print_wall_time(payload["wall_time"], len(paths))
    from saedoctor.atomic import atomic_write_bytes

    _results.write_result(NAME, payload, out, started, quick=args.quick)
    atomic_write_bytes(out / f"{NAME}.txt", printed.getvalue().encode())
    return 0


class _Tee(io.TextIOBase):
    """stdout that is also kept: the printed report goes to peer_agreement.txt as well."""

    def __init__(self, *streams: Any) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


def agreement(
    args: argparse.Namespace, paths: dict[int, Path], model_dir: Path, ref_model: Any
) -> dict[str, Any]:
    """Both tools once on `--tokens`: every shared metric side by side (printed and returned)."""
    print(
        f"saedoctor: one diagnose run, {len(paths)} SAEs, {args.tokens} tokens ...", file=sys.stderr
    )
    report, ours_s = run_saedoctor(args, paths)
    print(f"SAELens ({args.tl}): run_evals per SAE, one after another ...", file=sys.stderr)
    peers, theirs_s, load_s, tl_model, store, ignore = run_saelens(args, paths, model_dir)

    check = _peers.check_against_hf(tl_model, ref_model, store.batches[0], args.layer_list)
    entries = {Path(e["path"]).name: e for e in report["saes"]}
    per_layer, ours_flat = {}, {}
    for layer in args.layer_list:
        entry = entries[paths[layer].name]
        ours_flat[layer] = entry["metrics"]
        per_layer[layer] = compare(entry["metrics"], entry["feature_density"], peers[layer])

    audit = audit_density(args, paths, tl_model, ref_model, per_layer, entries, model_dir)
    sb_results, sb_note = saebench_side(args, paths, tl_model, store, ignore)
    sb_rows = {
        layer: compare(
            ours_flat[layer], entries[paths[layer].name]["feature_density"], r, SAEBENCH_BUGS
        )
        for layer, r in sb_results.items()
    }

    counted = report["run"].get("tokens_counted")
    print(
        f"\nmodel: default SmolLM2-135M-Instruct, float32, CPU ({torch.get_num_threads()} "
        f"threads); {args.tokens} tokens ({counted} counted) of {CORPUS}, context "
        f"{args.context}, batch {args.batch_size}; SAEs: "
        f"{'trained' if args.train_tokens else 'random'} TopK 576->4608 k=32"
    )
    print(
        f"TransformerLens ({args.tl}) vs HF: logits max|diff| "
        f"{check['logits_max_abs_diff']:.3g} (|logits| <= {check['logits_max_abs']:.3g}), "
        f"resid_post max|diff| {check['resid_post_max_abs_diff']:.3g}"
    )
    print_table("saedoctor vs SAELens run_evals", per_layer)
    if sb_rows:
        print_table(
            "saedoctor vs SAEBench 0.6.0 core (explained_variance / mse: known bugs, "
            "fixed in SAELens 6.45.x; compare variance_explained_legacy)",
            sb_rows,
        )
    if audit:
        print("\ndensity[] differences, audited (same token positions):")
        print_audit(audit, args.tl)
    if sb_note:
        print(f"\n{sb_note}")
    print(
        f"\nagreement run ({args.tokens} tokens; the timing's warm-up, not counted): saedoctor "
        f"{ours_s:.1f} s in one run; SAELens {theirs_s:.1f} s one after another "
        f"(of which {load_s:.1f} s model load + wrap)"
    )

    disagreements = [
        f"{k}@L{layer}"
        for layer, rows in per_layer.items()
        for k, r in rows.items()
        if r["status"] == "DIFF"
    ]
    missing = [
        k
        for k in _peers.DOWNSTREAM_KEYS
        if per_layer[args.layer_list[0]][k]["status"] == "not in report"
    ]
    if missing:
        print(f"note: saedoctor's report has no {', '.join(missing)} yet")
    print(
        "agreement: "
        + (
            "every shared metric within 1e-4"
            if not disagreements
            else "DIFFERENT: " + ", ".join(disagreements)
        )
    )
    explained = [
        layer
        for layer, a in audit.items()
        if a["counts_differ_from_saedoctor"] == 0
        and a["counts_differ_between_inputs"]
        == per_layer[layer]["density[]"]["features_with_different_counts"]
    ]
    if explained:
        print(
            f"  density[] at layers {explained}: SAELens's own SAE, given saedoctor's exact "
            "activations, reproduces saedoctor's counts; the differences are top-k boundary "
            f"flips from the inputs (TransformerLens {args.tl}: eager attention, saedoctor: "
            "HF sdpa), not from either side's metric code"
        )

    return {
        "options": {
            k: str(v) if isinstance(v, Path) else v
            for k, v in vars(args).items()
            if k not in ("layer_list",)
        },  # fmt: skip
        "tokens": args.tokens,
        "tokens_counted": counted,
        "tl_check": check,
        "agreement_run_s": {
            "saedoctor": round(ours_s, 2),
            "saelens": round(theirs_s, 2),
            "saelens_model_load": round(load_s, 2),
            "note": "one run each, the timing's warm-up: not a timing",
        },  # fmt: skip
        "target_ratio": TARGET_RATIO,
        "tolerance": TOLERANCE,
        "disagreements": disagreements,
        "disagreements_explained_by_inputs": [f"density[]@L{la}" for la in explained],
        "max_rel_diff": max_rel_diff(per_layer),
        "saelens": {str(k): v for k, v in per_layer.items()},
        "density_audit": {str(k): v for k, v in audit.items()},
        "saebench": {str(k): v for k, v in sb_rows.items()},
        "saebench_note": sb_note,
        "saebench_version": saebench_version(),
    }


def max_rel_diff(per_layer: dict[int, dict]) -> dict[str, float | None]:
    """Per metric, the largest relative difference over the layers (None: not compared)."""
    out: dict[str, float | None] = {}
    for key in next(iter(per_layer.values())):
        diffs = [rows[key]["rel_diff"] for rows in per_layer.values()]
        known = [d for d in diffs if d is not None]
        out[key] = max(known) if known else None
    return out


def time_both(args: argparse.Namespace, paths: dict[int, Path], model_dir: Path) -> dict:
    """Wall time of both sides (model load included), alternating, `--timing-runs` each."""
    tokens = args.timing_tokens
    print(f"timing: {args.timing_runs} alternating runs per side on {tokens} tokens ...",
          file=sys.stderr)  # fmt: skip

    def ours() -> float:
        return run_saedoctor(args, paths, tokens)[1]

    def theirs() -> float:
        seconds = run_saelens(args, paths, model_dir, tokens)[1]
        gc.collect()  # the wrapped model of the run before is garbage by now
        return seconds

    def show(name: str, run: int, seconds: float) -> None:
        print(f"  run {run} {name}: {seconds:.1f} s", file=sys.stderr, flush=True)

    runs = _results.alternate({"saedoctor": ours, "SAELens": theirs}, args.timing_runs,
                              warmup=0, on_run=show)  # fmt: skip
    reason = _results.fewer_reason(args.timing_runs, args.quick)
    ratios = _results.paired_ratios(runs["SAELens"], runs["saedoctor"])
    return {
        "tokens": tokens, "sae_count": len(paths), "includes_model_load": True,
        "warmup": f"the agreement run on {args.tokens} tokens",
        "saedoctor_s": _results.timing(runs["saedoctor"], allow_fewer=reason),
        "saelens_s": _results.timing(runs["SAELens"], allow_fewer=reason),
        "ratio": _results.timing(ratios, allow_fewer=reason),
    }  # fmt: skip


def print_wall_time(wall: dict, n_saes: int) -> None:
    ours, theirs, ratio = wall["saedoctor_s"], wall["saelens_s"], wall["ratio"]
    print(
        f"\nwall time, {n_saes} SAEs on {wall['tokens']} tokens (model load included on both "
        f"sides), median of {ours['n']} alternating runs (min-max): saedoctor "
        f"{ours['median']:.1f} s ({ours['min']:.1f}-{ours['max']:.1f}) in one run; SAELens "
        f"{theirs['median']:.1f} s ({theirs['min']:.1f}-{theirs['max']:.1f}) one after another"
    )
    verdict = "meets" if ratio["median"] >= TARGET_RATIO else "BELOW"
    print(f"ratio SAELens / saedoctor = {ratio['median']:.2f}x (min {ratio['min']:.2f}, max "
          f"{ratio['max']:.2f}; {verdict} the {TARGET_RATIO:.0f}x target)")  # fmt: skip


def saebench_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sae-bench")
    except PackageNotFoundError:
        return "not installed (a --saebench-wheel, when given, is named in options)"


if __name__ == "__main__":
    raise SystemExit(main())
