"""Where the `general` and `domain` training presets come from: candidates measured side by side.

    .venv/bin/python benchmarks/train_presets.py [--layer 10] [--corpus python-code]
        [--train-tokens 120000] [--eval-tokens 60000] [--threads 1] [--work sae_runs/presets]
        [--quick] [--out DIR]

Caches the embedded default's activations at `--layer` on `<corpus>@train` / `<corpus>@test`
(a single domain: Python source code by default), trains every candidate from one pass over
the same activations, diagnoses them on the held-out split and prints the table
(`<out>/train_presets.json`: seed, tokens, every candidate's metrics under `rows`, keyed by
candidate name; `<out>/train_presets.md`: the table). One seeded run: outcomes, not timings.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import _results  # noqa: E402
from prescription_ab import (  # noqa: E402
    QUICK_EVAL_TOKENS,
    QUICK_TRAIN_TOKENS,
    cache_activations,
    diagnose_cached,
    markdown,
    summary,
    work_paths,
)

NAME = "train_presets"

CANDIDATES: dict[str, dict] = {
    "general (x8, k=32, AuxK, b_dec mean)": {},
    "general + diversity 0.01": {"diversity_loss_weight": 0.01},
    "x4, k=32": {"expansion_factor": 4},
    "x8, k=64": {"top_k": 64},
    "x4, k=64": {"expansion_factor": 4, "top_k": 64},
}


def main() -> None:
    from saedoctor.sae.site import Site
    from saedoctor.train.config import preset_config, with_changes
    from saedoctor.train.trainer import SAESpec, train_on_activations

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layer", type=int, default=10)
    ap.add_argument("--corpus", default="python-code")
    ap.add_argument("--train-tokens", type=int, default=120_000)
    ap.add_argument("--eval-tokens", type=int, default=60_000)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=Path("sae_runs/ab/cache"))
    ap.add_argument("--work", type=Path, default=Path("sae_runs/presets"),
                    help="where the trained candidates go")  # fmt: skip
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
    train_file = args.cache / f"L{args.layer}-{args.corpus}-train.safetensors"
    test_file = args.cache / f"L{args.layer}-{args.corpus}-test.safetensors"
    acts = cache_activations(args.layer, f"{args.corpus}@train", args.train_tokens, train_file)
    cache_activations(args.layer, f"{args.corpus}@test", args.eval_tokens, test_file)
    site = Site(args.layer)
    base = preset_config("general", layers=[args.layer], training_tokens=args.train_tokens,
                         dataset=f"{args.corpus}@train", checkpoint_every=0).validate()  # fmt: skip
    specs = [SAESpec(f"c{i}", site, with_changes(base, changes, name).validate())
             for i, (name, changes) in enumerate(CANDIDATES.items())]  # fmt: skip
    result = train_on_activations(base, {site: acts}, args.work / "train", specs=specs,
                                  corpus=f"{args.corpus}@train")  # fmt: skip
    doc = diagnose_cached([result.sae_paths[s.name] for s in specs], test_file)
    rows = {name: summary(entry) for name, entry in zip(CANDIDATES, doc["saes"], strict=True)}
    payload = {"layer": args.layer, "corpus": args.corpus, "seed": base.seed,
               "train_tokens": args.train_tokens,
               "eval_tokens": int(doc["run"].get("tokens_counted") or 0),
               "candidates": CANDIDATES, "rows": rows,
               "wall_s": round(time.perf_counter() - start, 1),
               "threads": torch.get_num_threads()}  # fmt: skip
    table = markdown(payload)
    _results.write_result(NAME, payload, out, started, quick=args.quick, markdown=table)
    print(table)


if __name__ == "__main__":
    main()
