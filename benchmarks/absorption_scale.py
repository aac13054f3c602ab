"""Decoder-cosine absorption of a very large SAE on the CPU: time and peak memory.

    nice -n 19 .venv/bin/python benchmarks/absorption_scale.py [--d-in 4096] [--chunks K]

A random decoder with realistic row norms (log-normal around 1, as trained decoders drift
from unit norm) and 5 % near-duplicate rows (absorbed pairs), 90 % of features alive. Each
measurement runs in its own child process and reports that process's peak resident set size
(`ru_maxrss`), the weights included:

- exact, whole, at 8,192 and 16,384 latents;
- exact, whole, at 65,536 latents; or with `--chunks K` (a slower machine) its first K chunks
  only, the whole run's time extrapolated from the per-chunk time (the peak is reached in the
  first chunk: one float32 copy of the normalised rows and one budgeted block of cosines);
- sampled (2,048 features, 95 % CI) at 65,536 latents, and at 16,384 beside the exact value.

Writes `benchmarks/results/absorption_scale.json`.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "absorption_scale.json"

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-in", type=int, default=4096)
    parser.add_argument("--latents", type=int, default=65_536)
    parser.add_argument("--memory-mb", type=float, default=256.0)
    parser.add_argument("--chunks", type=int, default=0, help="time only K chunks at full size")
    parser.add_argument("--sample", type=int, default=2048)
    args = parser.parse_args()
    d, big, mem = args.d_in, args.latents, args.memory_mb
    runs = [measure(8192, d, "exact", 0, mem), measure(16_384, d, "exact", 0, mem),
            measure(16_384, d, "sampled", args.sample, mem)]  # fmt: skip
    if args.chunks:
        runs.append(measure(big, d, "chunks", args.chunks, mem))
    else:
        runs.append(measure(big, d, "exact", 0, mem))
    runs.append(measure(big, d, "sampled", args.sample, mem))
    dense_gib = big * big * 4 / 2**30
    doc = {
        "benchmark": "absorption_scale",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "memory_budget_mb": mem,
        "naive_similarity_matrix_gib_at_full_size": round(dense_gib, 1),
        "runs": runs,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
