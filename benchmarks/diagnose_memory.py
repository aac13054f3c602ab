"""Peak memory of `saedoctor diagnose` does not grow with the number of tokens streamed.

    nice -n 19 .venv/bin/python benchmarks/diagnose_memory.py [--small 100000] [--large 1000000]
        [--quick] [--out DIR]

Each run is `saedoctor diagnose --no-downstream` on the embedded default model and its
default SAE (a random SAE of the same shape when the default is not cached yet: memory
depends on the shapes, not on the weights), on `python-code@train` (the stdlib's source,
millions of tokens, so the large run really streams them). `--transcoders 4,10,16,22,28`
diagnoses random TopK transcoders (mlp_in → mlp_out, x8, k 32) at those blocks instead and
writes `transcoder_memory.json`. Each diagnosis runs in its own
child process; its peak resident set size is the `ru_maxrss` that `wait4` reports for that
child, so one run's peak never masks another's. Prints both peaks and their ratio (target:
within 10 %) and writes `<out>/diagnose_memory.json`. One run per size: the peak is a
property of the shapes, not a timing (each run's wall time is recorded for reference only).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import _proc
import _results
from _fixtures import default_or_random_sae

NAME = "diagnose_memory"
CORPUS = "python-code@train"
TARGET = 1.10
QUICK_SMALL, QUICK_LARGE = 2_000, 8_000


def peak_rss_mib(tokens: int, saes: list[Path], workdir: Path, extra: Sequence[str] = ()
                 ) -> tuple[float, float]:  # fmt: skip
    """(peak RSS in MiB, wall s) of one diagnosis; `extra`: more diagnose options."""
    report_path = workdir / f"run-{tokens}.json"
    command = [sys.executable, "-m", "saedoctor", "diagnose", "--quiet", "--no-downstream",
               "--corpus", CORPUS, "--tokens", str(tokens), *extra,
               *[arg for sae in saes for arg in ("--sae", str(sae))],
               "--out", str(report_path)]  # fmt: skip
    done = _proc.check(_proc.run_measured(command, log=workdir / f"run-{tokens}.log"),
                       f"diagnose --tokens {tokens}")  # fmt: skip
    report = json.loads(report_path.read_text())
    if report["run"]["tokens_processed"] < tokens:
        raise SystemExit(f"{CORPUS} ran out after {report['run']['tokens_processed']} tokens")
    return done.peak_rss_mib, done.wall_s


def main() -> None:
    started = time.time()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--transcoders", default=None,
                        help="comma-separated blocks: random transcoders there instead")
    parser.add_argument("--cards", type=int, default=None,
                        help="diagnose's --cards (default: diagnose's own default)")  # fmt: skip
    _results.add_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.small, args.large = QUICK_SMALL, QUICK_LARGE
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if args.transcoders:
            layers = [int(v) for v in args.transcoders.split(",")]
            saes = random_transcoders(layers, workdir)
            sae_note = f"random topk transcoders at blocks {layers}"
        else:
            sae, sae_note = default_or_random_sae(workdir)
            saes = [sae]
        runs = {}
        for tokens in (args.small, args.large):
            cards = () if args.cards is None else ("--cards", str(args.cards))
            peak, seconds = peak_rss_mib(tokens, saes, workdir, cards)
            runs[str(tokens)] = {
                "peak_rss_mib": round(peak, 1),
                "wall_s_one_run": round(seconds, 1),
            }
            print(f"{tokens:>10,} tokens: peak RSS {peak:8.1f} MiB ({seconds:.0f} s)", flush=True)
    ratio = runs[str(args.large)]["peak_rss_mib"] / runs[str(args.small)]["peak_rss_mib"]
    verdict = "ok" if ratio <= TARGET else "FAIL"
    print(f"ratio large/small: {ratio:.3f} (target <= {TARGET}): {verdict}")
    payload = {"corpus": CORPUS, "sae": sae_note, "downstream": False, "small": args.small,
               "large": args.large, "cards": args.cards, "runs": runs, "ratio": round(ratio, 4),
               "target": TARGET, "ok": ratio <= TARGET}  # fmt: skip
    name = "transcoder_memory" if args.transcoders else NAME
    _results.write_result(name, payload, _results.out_dir(args), started, quick=args.quick)


def random_transcoders(layers: list[int], workdir: Path) -> list[Path]:
    """Random TopK transcoders of the default model's width, saved natively: memory depends
    on the shapes, not on the weights."""
    import torch

    from saedoctor.sae.loaders import save_sae
    from saedoctor.sae.model import Dictionary, SAEConfig
    from saedoctor.sae.site import Site

    d_model = 576  # SmolLM2-135M
    paths = []
    for layer in layers:
        cfg = SAEConfig("topk", d_model, 8 * d_model, k=32, apply_b_dec_to_input=False,
                        site=Site(layer, "mlp_in"), output_site=Site(layer, "mlp_out"),
                        model_name="SmolLM2-135M-Instruct")  # fmt: skip
        tc = Dictionary(cfg)
        gen = torch.Generator().manual_seed(layer)
        with torch.no_grad():
            tc.W_dec.copy_(torch.nn.functional.normalize(torch.randn(8 * d_model, d_model,
                                                                     generator=gen), dim=1))
            tc.W_enc.copy_(tc.W_dec.T)
        paths.append(save_sae(tc, workdir / f"tc{layer}"))
    return paths


if __name__ == "__main__":
    main()
