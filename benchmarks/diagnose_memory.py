"""Peak memory of `saedoctor diagnose` does not grow with the number of tokens streamed.

    nice -n 19 .venv/bin/python benchmarks/diagnose_memory.py [--small 100000] [--large 1000000]

Each run is `saedoctor diagnose --no-downstream` on the embedded default model and its
default SAE (a random SAE of the same shape when the default is not cached yet: memory
depends on the shapes, not on the weights), on `python-code@train` (the stdlib's source,
millions of tokens, so the large run really streams them). Each diagnosis runs in its own
grandchild process; its peak resident set size is `getrusage(RUSAGE_CHILDREN).ru_maxrss`
as seen by a fresh intermediate process, so one run's peak never masks another's.
Prints both peaks and their ratio (target: within 10 %) and writes
`benchmarks/results/diagnose_memory.json`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CORPUS = "python-code@train"
TARGET = 1.10
RESULTS = Path(__file__).parent / "results" / "diagnose_memory.json"

# Runs one diagnosis as its own child and prints that child's peak RSS (KiB on Linux).
_MEASURE = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)
if done.returncode:
    sys.exit(done.returncode)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def sae_path(workdir: Path) -> tuple[Path, str]:
    """The cached default SAE, else a random one of its shape (layer, width, k)."""
    import torch

    from saedoctor import defaults
    from saedoctor.sae.loaders import save_sae
    from saedoctor.sae.model import SAE, SAEConfig
    from saedoctor.sae.site import Site

    default = defaults.default_sae_dir()
    if (default / "cfg.json").is_file():
        return default, "default SAE"
    d_in = 576  # SmolLM2-135M's width
    site = Site(defaults.DEFAULT_LAYER, defaults.DEFAULT_SITE_KIND)
    cfg = SAEConfig("topk", d_in, d_in * defaults.DEFAULT_EXPANSION, k=defaults.DEFAULT_K,
                    site=site)  # fmt: skip
    sae = SAE(cfg)
    with torch.no_grad():
        torch.manual_seed(0)
        sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn_like(sae.W_dec), dim=1))
        sae.W_enc.copy_(sae.W_dec.T)
    save_sae(sae, workdir / "sae")
    return workdir / "sae", "random SAE of the default's shape (default SAE not cached)"


def peak_rss_mib(tokens: int, sae: Path, workdir: Path) -> tuple[float, float]:
    command = [sys.executable, "-m", "saedoctor", "diagnose", "--quiet", "--no-downstream",
               "--corpus", CORPUS, "--tokens", str(tokens), "--sae", str(sae),
               "--out", str(workdir / f"run-{tokens}.json")]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _MEASURE, *command], capture_output=True,
                          text=True, check=True)  # fmt: skip
    seconds = time.perf_counter() - start
    report = json.loads((workdir / f"run-{tokens}.json").read_text())
    if report["run"]["tokens_processed"] < tokens:
        raise SystemExit(f"{CORPUS} ran out after {report['run']['tokens_processed']} tokens")
    return int(done.stdout.split()[-1]) / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        sae, sae_note = sae_path(workdir)
        runs = {}
        for tokens in (args.small, args.large):
            peak, seconds = peak_rss_mib(tokens, sae, workdir)
            runs[str(tokens)] = {"peak_rss_mib": round(peak, 1), "wall_s": round(seconds, 1)}
            print(f"{tokens:>10,} tokens: peak RSS {peak:8.1f} MiB ({seconds:.0f} s)", flush=True)
    ratio = runs[str(args.large)]["peak_rss_mib"] / runs[str(args.small)]["peak_rss_mib"]
    verdict = "ok" if ratio <= TARGET else "FAIL"
    print(f"ratio large/small: {ratio:.3f} (target <= {TARGET}): {verdict}")
    result = {"corpus": CORPUS, "sae": sae_note, "downstream": False, "runs": runs,
              "ratio": round(ratio, 4), "target": TARGET, "ok": ratio <= TARGET}  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
