"""The CUDA code paths end to end: `train` (every architecture, fp32 and bf16) and `diagnose`
(loss recovered on) on `--device cuda`, and the same diagnosis on the CPU for comparison.

    PYTHONPATH=src python3 benchmarks/cuda_paths.py --out results/cuda_paths.json

A small random Llama (tests/conftest.py's) stands in for a real model: what is checked is that
every path runs on the GPU and that its metrics equal the CPU's, not their values.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCHS = {"topk": [], "batchtopk": [], "relu": ["--sparsity-penalty", "1.0"],
         "jumprelu": ["--sparsity-penalty", "1.0"]}  # fmt: skip
COMPARED = ("l0", "variance_explained", "mse", "dead_pct", "loss_recovered", "kl_score",
            "ce_sae", "absorption")  # fmt: skip


def saedoctor(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "saedoctor", *args], capture_output=True,
                          text=True, cwd=ROOT)  # fmt: skip
    return done, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tokens", type=int, default=40_000)
    args = parser.parse_args()
    sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "src")]
    from conftest import save_tiny_llama

    work = Path(tempfile.mkdtemp(prefix="cuda_paths-"))
    model = save_tiny_llama(work / "model", n_layers=4, hidden=128)
    result: dict = {"device": args.device, "train": {}, "diagnose": {}}
    saes = []
    for arch, extra in ARCHS.items():
        for precision in ("fp32", "bf16"):
            out = work / f"{arch}-{precision}"
            done, wall = saedoctor(
                "train", "--model", str(model), "--dataset", "python-docs@train", "--layer", "1",
                "--layer", "3", "--tokens", str(args.tokens), "--context", "64",
                "--batch-size", "16", "--architecture", arch, "--expansion-factor", "4",
                "--precision", precision, "--device", args.device, "--out", str(out),
                "--quiet", "--json", *extra)  # fmt: skip
            entry = {"rc": done.returncode, "wall_s": round(wall, 1)}
            if done.returncode == 0:
                summary = json.loads(done.stdout)
                entry.update(tokens_per_s=summary["tokens_per_s"], final={
                    n: {k: s["final"].get(k) for k in ("l0", "variance_explained", "dead_pct")}
                    for n, s in summary["saes"].items()})  # fmt: skip
                if precision == "fp32":
                    saes += [s["path"] for s in summary["saes"].values()]
            else:
                entry["stderr"] = done.stderr[-2000:]
            result["train"][f"{arch}-{precision}"] = entry
            print(f"train {arch} {precision}: rc {done.returncode}, {wall:.1f} s", flush=True)
    reports = {}
    for device in (args.device, "cpu"):
        out = work / f"run-{device}.json"
        sae_args = [a for p in saes for a in ("--sae", p)]
        done, wall = saedoctor("diagnose", "--model", str(model), *sae_args, "--corpus",
                               "python-docs@test", "--tokens", "16384", "--device", device,
                               "--out", str(out), "--quiet")  # fmt: skip
        result["diagnose"][device] = {"rc": done.returncode, "wall_s": round(wall, 1)}
        if done.returncode == 0:
            reports[device] = json.loads(out.read_text())
        else:
            result["diagnose"][device]["stderr"] = done.stderr[-2000:]
        print(f"diagnose {device}: rc {done.returncode}, {wall:.1f} s", flush=True)
    if len(reports) == 2:
        worst = {}
        for a, b in zip(reports[args.device]["saes"], reports["cpu"]["saes"], strict=True):
            for key in COMPARED:
                x, y = a["metrics"].get(key), b["metrics"].get(key)
                if isinstance(x, int | float) and isinstance(y, int | float):
                    rel = abs(x - y) / max(abs(y), 1e-12)
                    worst[key] = max(worst.get(key, 0.0), rel)
        result["max_rel_diff_vs_cpu"] = worst
        print("max relative difference vs CPU:", json.dumps(worst), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
