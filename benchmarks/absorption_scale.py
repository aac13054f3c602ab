"""Decoder-cosine absorption of a very large SAE on the CPU: time and peak memory.

    nice -n 19 .venv/bin/python benchmarks/absorption_scale.py [--d-in 4096] [--chunks K]
        [--repeats 5] [--large-repeats 3] [--quick] [--out DIR]

A random decoder with realistic row norms (log-normal around 1, as trained decoders drift
from unit norm) and 5 % near-duplicate rows (absorbed pairs), 90 % of features alive. Each
measurement runs in its own child process and reports that process's peak resident set size
(`ru_maxrss`), the weights included:

- exact, whole, at 8,192 and 16,384 latents;
- exact, whole, at 65,536 latents; or with `--chunks K` (a slower machine) its first K chunks
  only, the whole run's time extrapolated from the per-chunk time (the peak is reached in the
  first chunk: one float32 copy of the normalised rows and one budgeted block of cosines);
- sampled (2,048 features, 95 % CI) at 65,536 latents, and at 16,384 beside the exact value.

Each measurement is repeated `--repeats` times (fresh processes, the sizes interleaved round
by round); the exact 65,536-latent one `--large-repeats` times (about 100 s each on 2 cores;
the reason is recorded). Times and peaks are medians with min and max. Writes
`<out>/absorption_scale.json`; `measurements` is keyed `<mode>_<latents>` (`exact_65536`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

import _results

NAME = "absorption_scale"
LARGE_REASON = ("the exact {n}-latent run takes about 100 s on 2 cores; {runs} runs keep the "
                "script near 10 minutes")  # fmt: skip
# Values every repeat should reproduce (same seed): recorded once, or per run if they differ.
DETERMINISTIC = (
    "n_latents",
    "d_in",
    "mode",
    "alive",
    "absorption",
    "absorption_method",
    "absorption_features",
    "absorption_ci95",
    "absorption_sampled",
    "chunk_rows",
    "chunks_run",
    "chunks_total",
    "weights_mib",
    "torch_threads",
)
TIMED = ("wall_s", "peak_rss_mib", "rss_after_weights_mib", "per_chunk_s", "extrapolated_total_s")

# One measurement in a fresh interpreter, so that one run's peak never masks another's.
_CHILD = """
import json, resource, sys, time
import torch
from saedoctor.metrics.absorption import _MaxCosine, chunk_rows, decoder_absorption

n, d, mode, arg, memory_mb = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
n, d, arg, memory_mb = int(n), int(d), int(arg), float(memory_mb)
gen = torch.Generator().manual_seed(0)
W = torch.randn(n, d, generator=gen)
W /= W.norm(dim=1, keepdim=True)
W *= torch.empty(n, 1).log_normal_(0.0, 0.25, generator=gen)
dup = n // 20
W[:dup] = W[dup : 2 * dup] + 0.2 * torch.randn(dup, d, generator=gen) / d**0.5
alive = torch.rand(n, generator=gen) < 0.9
rss_weights = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
out = {"n_latents": n, "d_in": d, "mode": mode, "alive": int(alive.sum())}
if mode == "exact":
    out |= decoder_absorption(W, alive, memory_mb=memory_mb)
    out["chunk_rows"] = chunk_rows(int(alive.sum()), d, memory_mb)
elif mode == "sampled":
    out |= decoder_absorption(W, alive, memory_mb=memory_mb, sample=arg, seed=1)
else:  # first `arg` chunks of the exact path
    index = alive.nonzero().squeeze(1)
    chunk = chunk_rows(index.numel(), d, memory_mb)
    scorer = _MaxCosine(W, index)
    built = time.perf_counter()
    for c in range(arg):
        scorer.best(torch.arange(c * chunk, (c + 1) * chunk))
    per_chunk = (time.perf_counter() - built) / arg
    chunks = -(-index.numel() // chunk)
    out |= {"chunk_rows": chunk, "chunks_run": arg, "chunks_total": chunks,
            "per_chunk_s": round(per_chunk, 3),
            "extrapolated_total_s": round(built - start + per_chunk * chunks, 1)}
out["wall_s"] = round(time.perf_counter() - start, 3)
out["rss_after_weights_mib"] = round(rss_weights / 1024, 1)
out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
out["weights_mib"] = round(W.numel() * 4 / 2**20, 1)
out["torch_threads"] = torch.get_num_threads()
print(json.dumps(out))
"""


def measure(n: int, d: int, mode: str, arg: int, memory_mb: float) -> dict:
    cmd = [sys.executable, "-c", _CHILD, str(n), str(d), mode, str(arg), str(memory_mb)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    return result


def summarise(runs: list[dict], reason: str | None) -> dict[str, Any]:
    """One measurement's repeats: the deterministic fields once, the timed ones as blocks."""
    first = runs[0]
    out: dict[str, Any] = {}
    for key in DETERMINISTIC:
        if key in first:
            out[key] = first[key]
            if len({json.dumps(r.get(key)) for r in runs}) > 1:  # float sums in another order
                print(f"note: {first['mode']} {first['n_latents']}: {key} differs between "
                      "repeats; all values recorded", file=sys.stderr)  # fmt: skip
                out[f"{key}_each_run"] = [r.get(key) for r in runs]
    for key in TIMED:
        if key in first:
            out[key] = _results.timing([r[key] for r in runs], allow_fewer=reason)
    return out


def main() -> None:
    started = time.time()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-in", type=int, default=4096)
    parser.add_argument("--latents", type=int, default=65_536)
    parser.add_argument("--small", default="8192,16384", help="exact sizes besides --latents")
    parser.add_argument("--memory-mb", type=float, default=256.0)
    parser.add_argument("--chunks", type=int, default=0, help="time only K chunks at full size")
    parser.add_argument("--sample", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=_results.MIN_RUNS)
    parser.add_argument("--large-repeats", type=int, default=3,
                        help="repeats of the exact run at --latents (the slow one)")  # fmt: skip
    _results.add_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.d_in, args.latents, args.small, args.sample = 256, 4096, "1024,2048", 256
        args.repeats = args.large_repeats = _results.QUICK_RUNS
    d, big, mem = args.d_in, args.latents, args.memory_mb
    small = [int(x) for x in args.small.split(",") if x.strip()]
    plan = {f"exact_{n}": (n, "exact", 0) for n in small}
    plan[f"sampled_{small[-1]}"] = (small[-1], "sampled", args.sample)
    plan[f"{'chunks' if args.chunks else 'exact'}_{big}"] = (
        big,
        "chunks" if args.chunks else "exact",
        args.chunks,
    )
    plan[f"sampled_{big}"] = (big, "sampled", args.sample)
    large_key = f"{'chunks' if args.chunks else 'exact'}_{big}"
    runs: dict[str, list[dict]] = {key: [] for key in plan}
    for r in range(max(args.repeats, args.large_repeats)):  # sizes interleaved round by round
        for key, (n, mode, arg) in plan.items():
            wanted = args.large_repeats if key == large_key else args.repeats
            if r < wanted:
                runs[key].append(measure(n, d, mode, arg, mem))
    measurements = {}
    for key, done in runs.items():
        reason = _results.fewer_reason(len(done), args.quick)
        if key == large_key and reason and not args.quick and not args.chunks:
            reason = LARGE_REASON.format(n=big, runs=len(done))
        measurements[key] = summarise(done, reason)
    payload = {
        "memory_budget_mb": mem, "d_in": d, "latents": big, "sample": args.sample,
        "naive_similarity_matrix_gib_at_full_size": round(big * big * 4 / 2**30, 1),
        "measurements": measurements,
    }  # fmt: skip
    _results.write_result(NAME, payload, _results.out_dir(args), started, quick=args.quick)


if __name__ == "__main__":
    main()
