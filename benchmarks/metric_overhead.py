"""Overhead of MetricSuite.update on top of a bare SAE forward pass.

    .venv/bin/python benchmarks/metric_overhead.py [--batches 8] [--tokens 2048] [--repeats 3]

For each config (d_in -> d_sae, top-k k=32, random SAE with tied unit-norm init) the same fixed
batches of random "LM-like" activations (non-zero mean, a few large dimensions) are run through
(1) encode + decode and (2) encode + decode + MetricSuite.update. The best of `--repeats` timed
runs (interleaved) after a warm-up is reported; compute() incl. exact absorption is timed
once, apart.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import nn

from saedoctor.metrics import MetricSuite
from saedoctor.sae.model import SAE, SAEConfig

CONFIGS = ((576, 4608), (768, 24576))
TARGET = 1.15


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
        out.append((x, torch.arange(tokens) // seq_len + b * tokens))
    return out


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best_times(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Min over repeats, the variants interleaved so background load hits them alike."""
    for fn in fns:
        fn()  # warm-up
    runs = [[timed(fn) for fn in fns] for _ in range(repeats)]
    return [min(col) for col in zip(*runs, strict=True)]


def bench(d_in: int, d_sae: int, args: argparse.Namespace) -> tuple[float, float, float]:
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

    with torch.no_grad():
        t_bare, t_metrics = best_times([bare, with_metrics], args.repeats)
        suite = with_metrics()
        start = time.perf_counter()
        suite.compute(W_dec=sae.W_dec)
        t_compute = time.perf_counter() - start
    return t_bare, t_metrics, t_compute


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--tokens", type=int, default=2048, help="tokens per batch")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--only", choices=[f"{a}x{b}" for a, b in CONFIGS], help="run one config")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.batches} batches x {args.tokens} tokens, k={args.k}")  # fmt: skip
    print(f"{'config':>12} {'bare s':>8} {'metrics s':>10} {'ratio':>6} {'compute+abs s':>14}")
    for d_in, d_sae in CONFIGS:
        if args.only and args.only != f"{d_in}x{d_sae}":
            continue
        t_bare, t_metrics, t_compute = bench(d_in, d_sae, args)
        ratio = t_metrics / t_bare
        flag = "ok" if ratio <= TARGET else f"> {TARGET}"
        print(
            f"{d_in:>5}->{d_sae:<6} {t_bare:8.3f} {t_metrics:10.3f} {ratio:6.3f} "
            f"{t_compute:14.2f}  {flag}"
        )


if __name__ == "__main__":
    main()
