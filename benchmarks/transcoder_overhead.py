"""A diagnose main pass over per-layer transcoders against its limit: the bare forward to the
deepest needed block plus bare encode/decode of the same tokens.

    .venv/bin/python benchmarks/transcoder_overhead.py [--layers 4,10,16,22,28] [--tokens 8192]
        [--expansion 8] [--k 32] [--repeats 5] [--quick] [--out DIR]

On the embedded default model (SmolLM2-135M-Instruct), one TopK transcoder per layer
(random, unit-norm tied init: timing does not depend on training) reads `mlp_in` and is
checked against `mlp_out`. Per round, alternating: (1) bare — the same corpus tokenised into
the same batches and through `site_batches` (one truncated forward reading every site) and
each transcoder's encode + decode; (2) the main pass of `saedoctor diagnose --no-downstream`
(`ModelPass.run` with the metric suites). The ratio is taken round by round; the final
metrics `compute()` (exact absorption included) is timed apart. Writes
`<out>/transcoder_overhead.json` and `.md`.
"""

from __future__ import annotations

import argparse
import time

import torch

import _results
from saedoctor.activations.model import load_model
from saedoctor.diagnose.model_pass import ModelPass
from saedoctor.diagnose.options import DiagnoseOptions
from saedoctor.diagnose.units import SAEUnderTest, new_suite, suite_sink, unit_sites
from saedoctor.sae.model import Dictionary, SAEConfig
from saedoctor.sae.site import Site

NAME = "transcoder_overhead"
TARGET = 1.2
CORPUS = "python-code@train"  # the stdlib's source: no download


def random_transcoder(layer: int, d: int, d_t: int, k: int, seed: int) -> Dictionary:
    cfg = SAEConfig("topk", d, d_t, k=k, apply_b_dec_to_input=False, site=Site(layer, "mlp_in"),
                    output_site=Site(layer, "mlp_out"))  # fmt: skip
    tc = Dictionary(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = torch.randn(d_t, d, generator=gen)
        tc.W_dec.copy_(w / w.norm(dim=1, keepdim=True))
        tc.W_enc.copy_(tc.W_dec.T)
    return tc.requires_grad_(False)


def main() -> None:
    started = time.time()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", default="4,10,16,22,28")
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--expansion", type=int, default=8)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--repeats", type=int, default=_results.MIN_RUNS)
    _results.add_arguments(p)
    args = p.parse_args()
    if args.quick:
        args.tokens, args.repeats, args.layers = 1024, _results.QUICK_RUNS, "4,10"
    layers = [int(v) for v in args.layers.split(",")]
    loaded = load_model(None)
    d = loaded.d_model
    opts = DiagnoseOptions(model=loaded.name, corpus=CORPUS, tokens=args.tokens, quiet=True,
                           downstream=False)  # fmt: skip
    tcs = [random_transcoder(layer, d, d * args.expansion, args.k, layer) for layer in layers]
    units = [SAEUnderTest(f"L{tc.site.layer}", "-", tc, new_suite(tc, opts)) for tc in tcs]
    passes = ModelPass(loaded, opts, units)
    batches = list(passes._batches(CORPUS, args.tokens))
    sites = unit_sites(units)
    print(f"{loaded.name}: transcoders at {layers}, d_t {d * args.expansion}, k {args.k}, "
          f"{sum(b.input_ids.numel() for b in batches)} tokens, {torch.get_num_threads()} "
          f"threads, {args.repeats} alternating rounds")  # fmt: skip

    def bare() -> None:
        from saedoctor.activations.stream import site_batches

        fresh = passes._batches(CORPUS, args.tokens)  # tokenised each round, as a run does
        with torch.inference_mode():
            for sb in site_batches(loaded.model, sites, fresh, opts.device):
                for tc in tcs:
                    tc(sb.acts[tc.site])

    def diagnose_pass() -> None:
        for unit in units:
            unit.suite = new_suite(unit.sae, opts)
        ModelPass(loaded, opts, units).run(CORPUS, args.tokens, suite_sink, "diagnose")

    reason = _results.fewer_reason(args.repeats, args.quick)
    timed = {"bare": _results.timed(bare), "diagnose": _results.timed(diagnose_pass)}
    runs = _results.alternate(timed, args.repeats)
    compute = [_results.timed(lambda: [u.suite.compute(W_dec=u.sae.W_dec) for u in units])()
               for _ in range(args.repeats)]  # fmt: skip
    ratio = _results.timing(_results.paired_ratios(runs["diagnose"], runs["bare"]),
                            allow_fewer=reason)  # fmt: skip
    result = {
        "settings": {"layers": layers, "tokens": args.tokens, "d_model": d,
                     "d_transcoder": d * args.expansion, "k": args.k, "corpus": CORPUS,
                     "repeats": args.repeats, "target_ratio": TARGET},
        "bare_s": _results.timing(runs["bare"], allow_fewer=reason),
        "diagnose_s": _results.timing(runs["diagnose"], allow_fewer=reason),
        "ratio": ratio,
        "compute_with_absorption_s": _results.timing(compute, allow_fewer=reason),
        "ok": ratio["median"] <= TARGET,
    }  # fmt: skip
    print(f"bare {result['bare_s']['median']:.2f} s, diagnose {result['diagnose_s']['median']:.2f}"
          f" s, ratio {ratio['median']:.3f} ({ratio['min']:.3f}–{ratio['max']:.3f}); compute "
          f"{result['compute_with_absorption_s']['median']:.2f} s")  # fmt: skip
    md = ("| layers | bare s | diagnose s | ratio (median, min–max) | compute + absorption s |\n"
          "|---|---|---|---|---|\n"
          f"| {args.layers} | {result['bare_s']['median']:.2f} | "
          f"{result['diagnose_s']['median']:.2f} | {ratio['median']:.3f} "
          f"({ratio['min']:.3f}–{ratio['max']:.3f}) | "
          f"{result['compute_with_absorption_s']['median']:.2f} |\n")  # fmt: skip
    _results.write_result(NAME, result, _results.out_dir(args), started, quick=args.quick,
                          markdown=md)


if __name__ == "__main__":
    main()
