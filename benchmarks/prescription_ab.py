"""Do the diagnosis's prescriptions fix what it diagnosed? A measured A/B on the embedded default.

    .venv/bin/python benchmarks/prescription_ab.py [--layer 22] [--train-tokens 120000]
        [--eval-tokens 60000] [--threads 1] [--cache sae_runs/ab/cache] [--work sae_runs/ab]
        [--quick] [--out DIR]

1. Activations of SmolLM2-135M (the embedded default, float32) at block `--layer`
   resid_post are read once from `python-docs@train` and `python-docs@test` and cached
   (`.safetensors`, the format `saedoctor diagnose --activations` reads).
2. A deliberately bad baseline is trained: TopK (x8, k=32) with b_dec at zero and no AuxK
   (override with `--baseline '{"field": value}'`).
3. `saedoctor diagnose` grades it on the held-out split; its prescriptions are applied with
   the same code as `saedoctor train --from-prescription run.json`.
4. More SAEs are trained on the same activations (one pass per token budget): the baseline
   with each prescription alone (the diversity loss at its prescribed weight included), with
   every prescription except the diversity loss, and with every prescription.
5. All are diagnosed on the held-out split; the table shows always-on count, dead %,
   L0, variance explained, absorption and the grade. `<out>/prescription_ab.json` holds the
   seed, token counts, baseline config, prescriptions and every arm's metrics (`rows`, keyed
   by arm name); `<out>/prescription_ab.md` the table. SAEs and reports go under `--work`.
   One run per arm: these are outcomes of a seeded training run, not timings.

Same steps by hand with the CLI (training from the model instead of the cache):
    saedoctor train --b-dec-init zeros --auxk-alpha 0 --layer 22 --tokens 120000 --out base
    saedoctor diagnose --sae base/L22-resid_post-topk-x8-k32 --out base.json
    saedoctor train --from-prescription base.json --out fixed
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

import _results

# A TopK SAE as sparsify would train it, minus two things: b_dec starts at zero instead of the
# data mean, and there is no AuxK. On late layers this grows always-on and dead latents.
DEFAULT_BASELINE = {"architecture": "topk", "b_dec_init": "zeros", "auxk_alpha": 0.0}
# Prescriptions also tried one at a time (token budget and data changes only with the rest).
SINGLE_ARMS = ("b_dec_init", "auxk_alpha", "top_k", "expansion_factor", "l1_penalty",
               "sparsity_penalty", "decoder_orthogonality_weight", "architecture")
ROWS = ("always_on_count", "dead_pct", "l0", "variance_explained", "diversity_top10",
        "absorption")
NAME = "prescription_ab"
QUICK_TRAIN_TOKENS, QUICK_EVAL_TOKENS = 4096, 2048


def cache_activations(layer: int, corpus: str, tokens: int, path: Path, batch_size: int = 8,
                      context: int = 128) -> torch.Tensor:  # fmt: skip
    """Counted-token activations at blocks.{layer}.hook_resid_post, cached in `path`."""
    from safetensors.torch import load_file, save_file

    if path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            whole = (f.metadata() or {}).get("whole_corpus") == "yes"
        acts = load_file(str(path))["activations"]
        if acts.shape[0] >= tokens or whole:
            return acts[:tokens]
    from saedoctor.activations.batches import token_batches
    from saedoctor.activations.corpus import iter_documents
    from saedoctor.activations.model import load_model
    from saedoctor.activations.stream import site_batches
    from saedoctor.sae.site import Site

    loaded = load_model(None)
    site = Site(layer, "resid_post")
    batches = token_batches(loaded.tokenizer, iter_documents(corpus), context=context,
                            batch_size=batch_size, max_tokens=None, name=corpus)  # fmt: skip
    chunks, held, start = [], 0, time.perf_counter()
    for sb in site_batches(loaded.model, [site], batches):
        chunks.append(sb.acts[site].float())
        held += chunks[-1].shape[0]
        if held >= tokens:
            break
    acts = torch.cat(chunks)[:tokens].contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    whole = "yes" if held < tokens else "no"  # the corpus ran out first
    save_file({"activations": acts}, str(path), metadata={"whole_corpus": whole})
    print(f"cached {acts.shape[0]:,} tokens of {corpus} at layer {layer} in "
          f"{time.perf_counter() - start:.0f} s → {path}")  # fmt: skip
    return acts


def diagnose_cached(sae_dirs: list[Path], test_file: Path) -> dict[str, Any]:
    from saedoctor.diagnose import DiagnoseOptions, diagnose

    return diagnose(DiagnoseOptions(saes=[str(p) for p in sae_dirs], activations=str(test_file),
                                    corpus="python-docs@test", quiet=True))  # fmt: skip


def summary(entry: dict[str, Any]) -> dict[str, Any]:
    m = entry["metrics"]
    out = {k: m.get(k) for k in ROWS}
    out["grade"] = (entry.get("grading") or {}).get("grade")
    out["held_back_by"] = (entry.get("grading") or {}).get("held_back_by")
    out["diagnoses"] = [d["id"] for d in entry.get("diagnoses") or []]
    # Every scalar metric of the report, not only the table's columns.
    out["metrics"] = {k: v for k, v in m.items() if isinstance(v, int | float | str | None)}
    return out


def work_paths(args: argparse.Namespace, out: Path, name: str) -> None:
    """Quick runs keep their SAEs and activation cache beside their results, so the full
    run's cache under sae_runs/ is never replaced by a tiny one."""
    if args.quick:
        args.work = out / f"{name}-work"
        args.cache = args.work / "cache"


def main() -> None:
    from saedoctor.sae.site import Site
    from saedoctor.train.config import TrainConfig, with_changes
    from saedoctor.train.prescription import plan_from_document
    from saedoctor.train.trainer import SAESpec, train_on_activations

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layer", type=int, default=22)
    ap.add_argument("--train-tokens", type=int, default=120_000)
    ap.add_argument("--eval-tokens", type=int, default=60_000)
    ap.add_argument("--baseline", default=json.dumps(DEFAULT_BASELINE))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--cache", type=Path, default=Path("sae_runs/ab/cache"))
    ap.add_argument("--work", type=Path, default=Path("sae_runs/ab"),
                    help="where the SAEs and diagnose reports go")  # fmt: skip
    _results.add_arguments(ap)
    args = ap.parse_args()
    out = _results.out_dir(args)
    if args.quick:
        args.train_tokens, args.eval_tokens = QUICK_TRAIN_TOKENS, QUICK_EVAL_TOKENS
    work_paths(args, out, NAME)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.time()
    start = time.perf_counter()
    train_file = args.cache / f"L{args.layer}-python-docs-train.safetensors"
    test_file = args.cache / f"L{args.layer}-python-docs-test.safetensors"
    train_acts = cache_activations(args.layer, "python-docs@train", args.train_tokens, train_file)
    train_acts = train_acts[: args.train_tokens]
    cache_activations(args.layer, "python-docs@test", args.eval_tokens, test_file)
    site = Site(args.layer)

    base_cfg = with_changes(TrainConfig(layers=[args.layer], training_tokens=args.train_tokens,
                                        dataset="python-docs@train", checkpoint_every=0),
                            json.loads(args.baseline), "--baseline").validate()  # fmt: skip
    t0 = time.perf_counter()
    base = train_on_activations(base_cfg, {site: train_acts}, args.work / "baseline",
                                corpus="python-docs@train")  # fmt: skip
    print(f"baseline trained in {time.perf_counter() - t0:.0f} s")
    (base_dir,) = base.sae_paths.values()
    base_doc = diagnose_cached([base_dir], test_file)
    from saedoctor.report.document import write_report

    write_report(base_doc, args.work / "baseline.json")
    (plan,) = plan_from_document(base_doc, source="baseline report")
    for c in plan.changes:
        print(f"prescribed {c.field}: {c.old!r} → {c.new!r} ({c.why})")
    for field, reason in plan.skipped:
        print(f"skipped {field}: {reason}")
    prescribed = {c.field: c.new for c in plan.changes}
    weight = prescribed.get("diversity_loss_weight", 0.01)
    fixed_cfg = plan.config
    if fixed_cfg.layers != [args.layer]:
        print(f"note: the prescribed layer {fixed_cfg.layers} is not cached; kept {args.layer}")
        fixed_cfg = with_changes(fixed_cfg, {"layers": [args.layer]}, "layer")
    # Each prescription alone (at the baseline's budget), all but the diversity loss, all.
    arms = {}
    for c in plan.changes:
        if c.field in SINGLE_ARMS:
            arms[f"{c.field} only"] = with_changes(base_cfg, {c.field: c.new}, c.field)
    arms["diversity_loss_weight only"] = with_changes(
        base_cfg, {"diversity_loss_weight": weight}, "div")
    arms["all prescriptions but diversity"] = with_changes(
        fixed_cfg, {"diversity_loss_weight": base_cfg.diversity_loss_weight}, "no-div")
    arms["all prescriptions"] = fixed_cfg
    need = max(c.training_tokens for c in arms.values())
    if need > train_acts.shape[0]:
        train_acts = cache_activations(args.layer, "python-docs@train", need, train_file)
    dirs = {}
    t0 = time.perf_counter()
    for budget in sorted({c.training_tokens for c in arms.values()}):
        group = {n: c.validate() for n, c in arms.items() if c.training_tokens == budget}
        specs = [SAESpec(_slug(n), site, c.for_layer(args.layer)) for n, c in group.items()]
        run_cfg = next(iter(group.values()))
        result = train_on_activations(run_cfg, {site: train_acts}, args.work / f"arms-{budget}",
                                      specs=specs, corpus="python-docs@train")  # fmt: skip
        for name in group:
            dirs[name] = result.sae_paths[_slug(name)]
    print(f"arms trained in {time.perf_counter() - t0:.0f} s")
    after_doc = diagnose_cached(list(dirs.values()), test_file)
    write_report(after_doc, args.work / "after.json")
    rows = {"baseline": summary(base_doc["saes"][0])}
    for name, entry in zip(dirs, after_doc["saes"], strict=True):
        rows[name] = summary(entry)
    result = {
        "layer": args.layer, "seed": base_cfg.seed, "train_tokens": args.train_tokens,
        "eval_corpus": "python-docs@test", "train_corpus": "python-docs@train",
        "eval_tokens": int(base_doc["run"].get("tokens_counted") or 0),
        "arm_train_tokens": {name: cfg.training_tokens for name, cfg in arms.items()},
        "baseline": base_cfg.sae_fields(), "prescriptions": [c.__dict__ for c in plan.changes],
        "skipped": plan.skipped, "rows": rows, "wall_s": round(time.perf_counter() - start, 1),
        "threads": torch.get_num_threads(),
    }  # fmt: skip
    table = markdown(result)
    _results.write_result(NAME, result, out, started, quick=args.quick, markdown=table)
    print(table)


def _slug(name: str) -> str:
    return name.replace(" ", "-")


def markdown(result: dict[str, Any]) -> str:
    lines = ["| SAE | always-on | dead % | L0 | variance explained | diversity | absorption "
             "| grade (held back by) |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in result["rows"].items():
        held = ", ".join(r.get("held_back_by") or [])
        lines.append(
            f"| {name} | {r['always_on_count']} | {r['dead_pct']:.1f} | {r['l0']:.1f} | "
            f"{r['variance_explained']:.3f} | {_num(r['diversity_top10'], 2)} | "
            f"{_num(r['absorption'])} | {r['grade']}{f' ({held})' if held else ''} |"
        )
    return "\n".join(lines) + "\n"


def _num(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


if __name__ == "__main__":
    main()
