"""`saedoctor compare --features`: how long Hungarian matching takes, how much memory chunked
best-match needs, and how many features two seeds of the embedded default share.

    .venv/bin/python benchmarks/feature_match.py [--runs 5] [--seed-saes DIR DIR]
        [--quick] [--out DIR]

(a) Hungarian (`match_features(method="hungarian")`, in process) on two random-but-LM-like
    4,608 x 576 decoders: rows drawn with a power-law spectrum (variance of direction i
    ~ 1/i) in a random basis, and B made of 70 % of A's rows plus noise (cos ~ 0.9), the rest
    new, shuffled. `--runs` runs; target: median under 60 s.
(b) Chunked best-match on two such 65,536 x 576 dictionaries, saved as SAEs: the whole
    `saedoctor compare --features A B --out FILE` in a child process (`_proc.run_measured`),
    `--runs` times: wall time and peak RSS (target <= 8 GiB).
(c) Seeds of the embedded default: the shipped SAE (seed 0) against SAEs trained with the
    same recorded command and other seeds (`saedoctor.train.default.build_default_sae`),
    given with `--seed-saes` or trained here (about 7 min each on 2 cores, side by side).
    Per pair: shared fraction and PW-MCC (Hungarian, exact), and best-match's upper bound
    on the same pair; the seed0-seed1 pair also through the command line.

Writes `<out>/feature_match.json` and `.md`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import _results
from _proc import check, run_measured

NAME = "feature_match"
D = 576  # SmolLM2-135M's width
N_HUNGARIAN, N_CHUNKED = 4608, 65536
QUICK_HUNGARIAN, QUICK_CHUNKED = 512, 4096
SHARED = 0.7  # fraction of B's rows that are noisy copies of A's in (a) and (b)
NOISE = 0.5  # copy = row + NOISE x (a new unit row): cos ~ 1 / sqrt(1 + NOISE^2) ~ 0.9
HUNGARIAN_TARGET_S = 60.0
CHUNKED_TARGET_GIB = 8.0
DEFAULT_SEEDS = (1, 2)
# One optimizer step (8 sequences x 128 tokens): the decoder as initialised, for comparing a
# trained seed with its own starting point.
INIT_TOKENS = 1024
CLI = Path(sys.executable).with_name("saedoctor")


def lm_like_pair(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two unit-row decoders [n, d], B sharing `SHARED` of A's rows with noise (module doc)."""
    gen = torch.Generator().manual_seed(seed)
    scale = torch.arange(1, d + 1, dtype=torch.float32) ** -0.5
    basis = torch.linalg.qr(torch.randn(d, d, generator=gen))[0]

    def rows(m: int) -> torch.Tensor:
        x = (torch.randn(m, d, generator=gen) * scale) @ basis.T
        return x / x.norm(dim=1, keepdim=True)

    a = rows(n)
    k = int(SHARED * n)
    b = torch.cat([a[:k] + NOISE * rows(k), rows(n - k)])
    b = b[torch.randperm(n, generator=gen)]
    return a, b / b.norm(dim=1, keepdim=True)


def hungarian_part(n: int, runs: int, reason: str | None) -> dict[str, Any]:
    from saedoctor.metrics.feature_match import HUNGARIAN, match_features

    a, b = lm_like_pair(n, D, seed=0)
    walls, match = [], None
    for r in range(runs):
        start = time.perf_counter()
        match = match_features(a, b, method=HUNGARIAN)
        walls.append(time.perf_counter() - start)
        print(f"(a) hungarian {n} x {n}: run {r + 1} {walls[-1]:.1f} s", file=sys.stderr)
    wall = _results.timing(walls, allow_fewer=reason, digits=3)
    return {"n_a": n, "n_b": n, "d": D, "wall_s": wall, "target_s": HUNGARIAN_TARGET_S,
            "ok": wall["median"] < HUNGARIAN_TARGET_S, **match_figures(match)}  # fmt: skip


def match_figures(match: Any) -> dict[str, Any]:
    return {"method": match.method, "shared_fraction": match.shared_fraction,
            "pw_mcc": match.pw_mcc, "pw_mcc_exact": match.pw_mcc_exact,
            "n_shared": match.n_shared}  # fmt: skip


def save_pair(n: int, work: Path) -> tuple[Path, Path]:
    """The LM-like pair of (a) at size n, saved as two TopK SAEs (tied encoders)."""
    from saedoctor.sae.loaders import save_sae
    from saedoctor.sae.model import SAE, SAEConfig

    paths = []
    for name, rows in zip("ab", lm_like_pair(n, D, seed=1), strict=True):
        sae = SAE(SAEConfig("topk", D, n, k=32))
        with torch.no_grad():
            sae.W_dec.copy_(rows)
            sae.W_enc.copy_(rows.T)
        paths.append(save_sae(sae, work / name))
    return paths[0], paths[1]


def chunked_part(n: int, runs: int, reason: str | None, work: Path) -> dict[str, Any]:
    a, b = save_pair(n, work)
    out = work / "match.json"
    cmd = [str(CLI), "compare", "--features", str(a), str(b), "--method", "best-match",
           "--out", str(out)]  # fmt: skip
    walls, rss = [], []
    for r in range(runs):
        measured = check(run_measured(cmd, log=work / f"chunked{r}.log"), "compare --features")
        walls.append(measured.wall_s)
        rss.append(measured.peak_rss_mib)
        print(f"(b) best-match {n} x {n}: run {r + 1} {measured.wall_s:.1f} s, "
              f"{measured.peak_rss_mib:.0f} MiB", file=sys.stderr)  # fmt: skip
    doc = json.loads(out.read_text())
    peak = _results.timing(rss, allow_fewer=reason, digits=1)
    return {"n_a": n, "n_b": n, "d": D,
            "command": "saedoctor compare --features A B --method best-match --out FILE",
            "wall_s": _results.timing(walls, allow_fewer=reason, digits=2),
            "peak_rss_mib": peak, "max_peak_rss_gib": round(peak["max"] / 1024, 2),
            "target_gib": CHUNKED_TARGET_GIB, "ok": peak["max"] / 1024 <= CHUNKED_TARGET_GIB,
            "in_command_wall_s": doc["wall_s"],
            **{k: doc[k] for k in ("method", "shared_fraction", "pw_mcc", "pw_mcc_exact",
                                   "n_shared")}}  # fmt: skip


def seed_saes(given: list[Path] | None, work: Path, quick: bool) -> dict[str, Path]:
    """seed label -> SAE folder: the shipped default first, then the given or trained ones."""
    from saedoctor import defaults

    out = {"seed0": defaults.default_sae_dir()}
    if given:
        return out | {_seed_label(p): p for p in given}
    if quick:
        from _fixtures import random_default_shape_sae

        return out | {"seed1": random_default_shape_sae(work / "seed1")}
    from saedoctor.train import default as default_sae

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=len(DEFAULT_SEEDS)) as pool:
        built = pool.map(lambda s: default_sae.build_default_sae(work / f"seed{s}", s),
                         DEFAULT_SEEDS)  # fmt: skip
        return out | {f"seed{s}": p for s, p in zip(DEFAULT_SEEDS, built, strict=True)}


def _seed_label(path: Path) -> str:
    from saedoctor.sae.loaders import load_sae

    trainer = load_sae(path).cfg.metadata.get("trainer") or {}
    return f"seed{trainer.get('seed', path.name)}"


def init_part(label: str, trained: Path, work: Path) -> dict[str, Any]:
    """A trained seed against the same command and seed stopped after one step: how far
    training moved the decoder from its random initialisation."""
    from saedoctor.report.feature_compare import compare_features
    from saedoctor.sae.loaders import load_sae
    from saedoctor.train import default as default_sae

    seed = (load_sae(trained).cfg.metadata.get("trainer") or {}).get("seed") or 0
    argv = default_sae.train_command(work / "init", seed)
    argv[argv.index("--tokens") + 1] = str(INIT_TOKENS)
    check(run_measured([sys.executable, "-m", "saedoctor", *argv[1:]], log=work / "init.log"),
          "train (one step)")  # fmt: skip
    (init,) = [d for d in (work / "init").iterdir() if (d / "cfg.json").is_file()]
    match = compare_features(init, trained).match
    print(f"(c) {label} vs its own init: shared {match.shared_fraction:.3f}, PW-MCC "
          f"{match.pw_mcc:.3f}", file=sys.stderr)  # fmt: skip
    return {"trained": label, "init_command": " ".join(argv).replace(str(work / "init"), "OUT"),
            **match_figures(match)}  # fmt: skip


def seeds_part(saes: dict[str, Path], work: Path) -> dict[str, Any]:
    from saedoctor.metrics.feature_match import BEST_MATCH, HUNGARIAN
    from saedoctor.report.feature_compare import compare_features
    from saedoctor.sae.loaders import load_sae

    pairs = {}
    for (la, a), (lb, b) in itertools.combinations(saes.items(), 2):
        exact = compare_features(a, b, method=HUNGARIAN)
        bound = compare_features(a, b, method=BEST_MATCH)
        pairs[f"{la}-{lb}"] = {
            **match_figures(exact.match), "hungarian_wall_s": round(exact.wall_s, 2),
            "mean_best_cos_a": float(exact.match.best_cos_a.mean()),
            "best_match": match_figures(bound.match),
        }  # fmt: skip
        print(f"(c) {la} vs {lb}: shared {exact.match.shared_fraction:.3f}, PW-MCC "
              f"{exact.match.pw_mcc:.3f} (best-match bound {bound.match.pw_mcc:.3f})",
              file=sys.stderr)  # fmt: skip
    first, second = list(saes.values())[:2]
    cmd = [str(CLI), "compare", "--features", str(first), str(second), "--out",
           str(work / "seeds.json")]  # fmt: skip
    measured = check(run_measured(cmd, log=work / "seeds.log"), "compare --features (seeds)")
    builds = {label: (load_sae(p).cfg.metadata.get("build") or {}).get("command")
              for label, p in saes.items()}  # fmt: skip
    label, trained = list(saes.items())[1]
    return {"saes": builds, "pairs": pairs, "init_vs_trained": init_part(label, trained, work),
            "cli": {"command": "saedoctor compare --features SEED0 SEED1",
                    "summary": json.loads((work / "seeds.json").read_text())["summary"],
                    "wall_s_one_run": round(measured.wall_s, 2),
                    "peak_rss_mib_one_run": round(measured.peak_rss_mib, 1)}}  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    h, c = result["hungarian"], result["chunked"]
    lines = ["| part | size | method | median wall s (min–max) | peak RSS | shared | PW-MCC |",
             "|---|---|---|---|---|---|---|",
             f"| (a) LM-like | {h['n_a']} × {h['n_b']} | {h['method']} | "
             f"{_span(h['wall_s'])} | – | {h['shared_fraction']:.3f} | {h['pw_mcc']:.3f} |",
             f"| (b) LM-like | {c['n_a']} × {c['n_b']} | {c['method']} (whole command) | "
             f"{_span(c['wall_s'])} | {c['max_peak_rss_gib']} GiB | "
             f"{c['shared_fraction']:.3f} | {_mcc(c)} |"]  # fmt: skip
    for label, p in result["seeds"]["pairs"].items():
        lines.append(f"| (c) default {label} | 4608 × 4608 | {p['method']} | "
                     f"{p['hungarian_wall_s']} (one run) | – | {p['shared_fraction']:.3f} | "
                     f"{p['pw_mcc']:.3f} (best-match ≤ {p['best_match']['pw_mcc']:.3f}) |")
    init = result["seeds"]["init_vs_trained"]
    lines.append(f"| (c) default {init['trained']} vs its one-step init | 4608 × 4608 | "
                 f"{init['method']} | – | – | {init['shared_fraction']:.3f} | "
                 f"{init['pw_mcc']:.3f} |")
    return "\n".join(lines) + "\n"


def _mcc(part: dict[str, Any]) -> str:
    return f"{part['pw_mcc']:.3f}" if part["pw_mcc_exact"] else f"≤ {part['pw_mcc']:.3f}"


def _span(block: dict[str, Any]) -> str:
    return f"{block['median']:.1f} ({block['min']:.1f}–{block['max']:.1f})"


def main() -> None:
    started = time.time()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=_results.MIN_RUNS)
    parser.add_argument("--seed-saes", type=Path, nargs="+", default=None,
                        help="SAEs trained by the default's recorded command with other seeds "
                             "(default: train seeds 1 and 2 here)")  # fmt: skip
    _results.add_arguments(parser)
    args = parser.parse_args()
    runs = _results.QUICK_RUNS if args.quick else args.runs
    reason = _results.fewer_reason(runs, args.quick)
    n_h, n_c = (QUICK_HUNGARIAN, QUICK_CHUNKED) if args.quick else (N_HUNGARIAN, N_CHUNKED)
    with tempfile.TemporaryDirectory(prefix="saedoctor-feature-match-") as tmp:
        work = Path(tmp)
        saes = seed_saes(args.seed_saes, work, args.quick)
        result = {"settings": {"d": D, "shared": SHARED, "noise": NOISE, "runs": runs,
                               "torch_threads": torch.get_num_threads()},
                  "hungarian": hungarian_part(n_h, runs, reason),
                  "chunked": chunked_part(n_c, runs, reason, work),
                  "seeds": seeds_part(saes, work)}  # fmt: skip
    _results.write_result(NAME, result, _results.out_dir(args), started, quick=args.quick,
                          markdown=markdown(result))


if __name__ == "__main__":
    main()
