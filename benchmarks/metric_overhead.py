"""Overhead of MetricSuite.update on top of a bare SAE forward pass.

    .venv/bin/python benchmarks/metric_overhead.py [--batches 8] [--tokens 2048] [--repeats 5]
        [--only 576x4608] [--quick] [--out DIR]

For each config (d_in -> d_sae, top-k k=32, random SAE with tied unit-norm init) the same fixed
batches of random "LM-like" activations (non-zero mean, a few large dimensions) are run through
(1) encode + decode and (2) encode + decode + MetricSuite.update, alternately (A B A B ...)
after a warm-up, `--repeats` times each. The ratio is taken round by round (each pair ran under
the same load) and its median reported with min and max; compute() incl. exact absorption is
timed `--repeats` times apart. Writes `<out>/metric_overhead.json` and `.md`.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import _results
from saedoctor.metrics import MetricSuite
from saedoctor.sae.model import SAE, SAEConfig

NAME = "metric_overhead"
CONFIGS = ((576, 4608), (768, 24576))
TARGET = 1.20  # with every metric's interval (per-block sums) included


def random_topk_sae(d_in: int, d_sae: int, k: int, data_mean: torch.Tensor) -> SAE:
    """Tied unit-norm init with b_dec at the data mean (as trainers initialise it)."""
    sae = SAE(SAEConfig("topk", d_in, d_sae, k=k))
    with torch.no_grad():
        nn.init.normal_(sae.W_dec)
        sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True)
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_dec.copy_(data_mean)
    return sae.requires_grad_(False)


def data_mean(d_in: int) -> torch.Tensor:
    mean = torch.randn(d_in, generator=torch.Generator().manual_seed(1))
    mean[:4] *= 50  # a few "massive activation" dimensions, as in real residual streams
    return mean


def make_batches(d_in: int, n_batches: int, tokens: int, seq_len: int) -> list[tuple]:
    g = torch.Generator().manual_seed(0)
    mean = data_mean(d_in)
    out = []
    for b in range(n_batches):
        x = torch.randn(tokens, d_in, generator=g) * 2 + mean
        # sequence ids in corpus order: they pick the interval blocks
        out.append((x, torch.arange(tokens) // seq_len + b * (tokens // seq_len)))
    return out


def bench(d_in: int, d_sae: int, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    sae = random_topk_sae(d_in, d_sae, args.k, data_mean(d_in))
    batches = make_batches(d_in, args.batches, args.tokens, args.seq_len)

    def bare() -> None:
        for x, _ in batches:
            sae.decode(sae.encode(x))

    def with_metrics() -> MetricSuite:
        suite = MetricSuite(d_in, d_sae)
        for x, seq in batches:
            codes = sae.encode(x)
            suite.update(x, sae.decode(codes), codes, seq)
        return suite

    reason = _results.fewer_reason(args.repeats, args.quick)
    with torch.no_grad():
        runs = _results.alternate(
            {"bare": _results.timed(bare), "metrics": _results.timed(with_metrics)}, args.repeats
        )
        suite = with_metrics()
        compute = [_results.timed(lambda: suite.compute(W_dec=sae.W_dec))()
                   for _ in range(args.repeats)]  # fmt: skip
    ratio = _results.timing(_results.paired_ratios(runs["metrics"], runs["bare"]),
                            allow_fewer=reason)  # fmt: skip
    return {
        "d_in": d_in, "d_sae": d_sae,
        "bare_s": _results.timing(runs["bare"], allow_fewer=reason),
        "metrics_s": _results.timing(runs["metrics"], allow_fewer=reason),
        "ratio": ratio,
        "compute_with_absorption_s": _results.timing(compute, allow_fewer=reason),
        "ok": ratio["median"] <= TARGET,
    }  # fmt: skip


def markdown(configs: dict[str, dict]) -> str:
    lines = ["| config | bare s | metrics s | ratio (median, min–max) | compute + absorption s |",
             "|---|---|---|---|---|"]  # fmt: skip
    for name, c in configs.items():
        r = c["ratio"]
        lines.append(f"| {name} | {c['bare_s']['median']:.3f} | {c['metrics_s']['median']:.3f} | "
                     f"{r['median']:.3f} ({r['min']:.3f}–{r['max']:.3f}) | "
                     f"{c['compute_with_absorption_s']['median']:.2f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    started = time.time()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--tokens", type=int, default=2048, help="tokens per batch")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--repeats", type=int, default=_results.MIN_RUNS)
    p.add_argument("--only", choices=[f"{a}x{b}" for a, b in CONFIGS], help="run one config")
    _results.add_arguments(p)
    args = p.parse_args()
    if args.quick:
        args.batches, args.tokens, args.repeats = 2, 256, _results.QUICK_RUNS
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.batches} batches x {args.tokens} tokens, k={args.k}, "
          f"{args.repeats} alternating runs (medians)")  # fmt: skip
    print(f"{'config':>12} {'bare s':>8} {'metrics s':>10} {'ratio':>6} {'compute+abs s':>14}")
    configs = {}
    for d_in, d_sae in CONFIGS:
        if args.only and args.only != f"{d_in}x{d_sae}":
            continue
        c = configs[f"{d_in}x{d_sae}"] = bench(d_in, d_sae, args)
        flag = "ok" if c["ok"] else f"> {TARGET}"
        print(
            f"{d_in:>5}->{d_sae:<6} {c['bare_s']['median']:8.3f} {c['metrics_s']['median']:10.3f} "
            f"{c['ratio']['median']:6.3f} {c['compute_with_absorption_s']['median']:14.2f}  {flag}"
        )
    settings = {"batches": args.batches, "tokens_per_batch": args.tokens, "seq_len": args.seq_len,
                "k": args.k, "repeats": args.repeats, "target_ratio": TARGET}  # fmt: skip
    _results.write_result(NAME, {"settings": settings, "configs": configs},
                          _results.out_dir(args), started, quick=args.quick,
                          markdown=markdown(configs))  # fmt: skip


if __name__ == "__main__":
    main()
