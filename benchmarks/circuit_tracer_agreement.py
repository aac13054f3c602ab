"""saedoctor's circuit-tracer transcoder sets, checked against circuit-tracer 0.5.0 itself.

    .venv/bin/python benchmarks/circuit_tracer_agreement.py [--rows 4096] [--layers 3]
        [--train-dir DIR | --train-tokens 20000] [--graph-layers 30] [--prompt TEXT]
        [--max-feature-nodes N] [--skip-graph] [--quick] [--out DIR]

circuit-tracer runs in its own venv (`_circuit_tracer_env.py`, built on first use) through
`_circuit_tracer_worker.py`; both sides read the same files and the same inputs.

(a) saedoctor writes, circuit-tracer reads: seeded random transcoder sets (jumprelu, relu with
    b_dec subtracted from the input, jumprelu + skip; `--layers` layers, 576 -> 2304) saved with
    `save_circuit_tracer`; circuit-tracer's loader reads them and encodes / decodes LM-like
    inputs (`--rows` rows per layer). Compared with saedoctor's `encode` / `forward`.
(b) circuit-tracer writes, saedoctor reads: random sets from circuit-tracer's own
    `to_safetensors` (worker write-plt), read by `load_dictionaries`: weights compared exactly,
    then encode / decode as in (a).
(c) An attribution graph (circuit-tracer's nnsight backend, `attribute`) of the default model
    with saedoctor-trained transcoders at blocks 0..`--graph-layers`-1 (trained here with
    `saedoctor train --kind transcoder --architecture jumprelu`, or read from --train-dir),
    scored with circuit-tracer's `compute_graph_scores` plus the error nodes' influence share.

Errors per tensor: max |ours - theirs| and that over max |theirs| (the tensor's scale; an
element-wise ratio is meaningless where a value is 0). Results: `circuit_tracer_agreement.json`
and `.md`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _circuit_tracer_env as ct_env  # noqa: E402
import _results  # noqa: E402
from saedoctor.sae.loaders import load_dictionaries, save_circuit_tracer  # noqa: E402
from saedoctor.sae.model import Dictionary, SAEConfig  # noqa: E402
from saedoctor.sae.site import Site  # noqa: E402

NAME = "circuit_tracer_agreement"
TOLERANCE = 1e-5  # relative to the tensor's scale, float32
# (architecture, skip, subtract b_dec from the input): the last exercises the b_dec fold.
OURS_VARIANTS = {"jumprelu": ("jumprelu", False, False), "relu": ("relu", False, True),
                 "jumprelu_skip": ("jumprelu", True, False)}  # fmt: skip
THEIRS_VARIANTS = {"jumprelu": [], "relu": ["--activation", "relu"], "jumprelu_skip": ["--skip"]}
DEFAULT_PROMPT = "The capital of France is Paris, and the capital of Germany is"


# -- fixtures -------------------------------------------------------------------------------
def random_transcoders(arch: str, n_layers: int, d_model: int, d_t: int, *, skip: bool,
                       apply_b_dec: bool, seed: int) -> list[Dictionary]:  # fmt: skip
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float, mean: float = 0.0) -> torch.Tensor:
        return mean + scale * torch.randn(*shape, generator=gen)

    dicts = []
    for layer in range(n_layers):
        cfg = SAEConfig(arch, d_model, d_t, apply_b_dec_to_input=apply_b_dec, skip=skip,
                        site=Site(layer, "mlp_in"), output_site=Site(layer, "mlp_out"))  # fmt: skip
        d = Dictionary(cfg)
        with torch.no_grad():
            d.W_enc.copy_(rand(d_model, d_t, scale=d_model**-0.5))
            d.W_dec.copy_(rand(d_t, d_model, scale=d_t**-0.5))
            d.b_enc.copy_(rand(d_t, scale=0.2))
            d.b_dec.copy_(rand(d_model, scale=0.2))
            if d.W_skip is not None:
                d.W_skip.copy_(rand(d_model, d_model, scale=0.3 * d_model**-0.5))
            if d.threshold is not None:
                # Mostly positive, a few negative: the writer must raise those to 0.
                d.threshold.copy_(rand(d_t, scale=0.3, mean=0.4))
        dicts.append(d)
    return dicts


def lm_like_inputs(n_layers: int, rows: int, d_model: int, seed: int) -> dict[str, torch.Tensor]:
    """Per-dimension scales spread over two orders of magnitude and a few large outlier
    dimensions, as in a residual / MLP-input stream."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for layer in range(n_layers):
        scale = torch.exp(torch.randn(d_model, generator=gen))
        x = torch.randn(rows, d_model, generator=gen) * scale
        x[:, :4] += 20 * torch.randn(4, generator=gen)  # outlier dimensions with a large mean
        out[f"x_{layer}"] = x.contiguous()
    return out


# -- comparisons ----------------------------------------------------------------------------
def error(ours: torch.Tensor, theirs: torch.Tensor) -> dict[str, float]:
    diff = (ours.double() - theirs.double()).abs().max().item()
    scale = theirs.double().abs().max().item()
    return {"max_abs": diff, "max_rel": diff / scale if scale else diff}


def peer_outputs(directory: Path, inputs_file: Path, work: Path) -> dict[str, torch.Tensor]:
    out = work / f"{directory.name}-outputs.safetensors"
    ct_env.run_worker(["encode-decode", str(directory), "--inputs", str(inputs_file),
                       "--out", str(out)])  # fmt: skip
    return load_file(str(out))


def compare_outputs(dicts: list[Dictionary], inputs: dict[str, torch.Tensor],
                    theirs: dict[str, torch.Tensor]) -> dict[str, Any]:  # fmt: skip
    """Per layer: codes and full output (decoder + skip) against circuit-tracer's, plus how
    many features fire on one side only."""
    per_tensor: dict[str, dict[str, float]] = {}
    fire_mismatch = 0
    with torch.no_grad():
        for layer, d in enumerate(dicts):
            x = inputs[f"x_{layer}"]
            recon, codes = d(x)
            acts = codes.dense()
            per_tensor[f"acts_{layer}"] = error(acts, theirs[f"acts_{layer}"])
            per_tensor[f"recon_{layer}"] = error(recon, theirs[f"recon_{layer}"])
            fire_mismatch += int(((acts != 0) != (theirs[f"acts_{layer}"] != 0)).sum())
    l0 = [float((theirs[f"acts_{i}"] != 0).sum(-1).float().mean()) for i in range(len(dicts))]
    return {"tensors": per_tensor, "fire_mismatch": fire_mismatch, "mean_l0": l0,
            "max_rel": max(e["max_rel"] for e in per_tensor.values()),
            "max_abs": max(e["max_abs"] for e in per_tensor.values())}  # fmt: skip


def weights_equal(dicts: list[Dictionary], directory: Path) -> dict[str, Any]:
    """saedoctor's loaded weights against the raw circuit-tracer files, exactly (in the
    orientation each side documents: circuit-tracer's W_enc and W_skip are transposed)."""
    mismatched = []
    for layer, d in enumerate(dicts):
        raw = load_file(str(directory / f"layer_{layer}.safetensors"))
        ours = {"W_enc": d.W_enc.T, "W_dec": d.W_dec, "b_enc": d.b_enc, "b_dec": d.b_dec}
        if d.threshold is not None:
            ours["activation_function.threshold"] = d.threshold
        if d.W_skip is not None:
            ours["W_skip"] = d.W_skip.T
        if set(ours) != set(raw):
            mismatched.append(f"layer {layer}: keys {sorted(ours)} vs {sorted(raw)}")
        mismatched += [f"layer {layer}: {k}" for k in ours
                       if k in raw and not torch.equal(ours[k].detach(), raw[k])]  # fmt: skip
    return {"exact": not mismatched, "mismatched": mismatched}


def check_ours_to_theirs(args: argparse.Namespace, work: Path, inputs_file: Path,
                         inputs: dict[str, torch.Tensor]) -> dict[str, Any]:  # fmt: skip
    results = {}
    for i, (name, (arch, skip, apply_b_dec)) in enumerate(OURS_VARIANTS.items()):
        dicts = random_transcoders(arch, args.layers, args.d_model, args.d_transcoder,
                                   skip=skip, apply_b_dec=apply_b_dec, seed=args.seed + i)
        directory = save_circuit_tracer(dicts, work / f"ours_{name}")
        results[name] = compare_outputs(dicts, inputs, peer_outputs(directory, inputs_file, work))
        print(f"(a) {name}: max rel {results[name]['max_rel']:.2e}", file=sys.stderr)
    return results


def check_theirs_to_ours(args: argparse.Namespace, work: Path, inputs_file: Path,
                         inputs: dict[str, torch.Tensor]) -> dict[str, Any]:  # fmt: skip
    results = {}
    for i, (name, extra) in enumerate(THEIRS_VARIANTS.items()):
        directory = work / f"theirs_{name}"
        shape = ["--n-layers", str(args.layers), "--d-model", str(args.d_model),
                 "--d-transcoder", str(args.d_transcoder)]  # fmt: skip
        ct_env.run_worker(["write-plt", str(directory), *shape, "--seed", str(args.seed + 10 + i),
                           *extra])  # fmt: skip
        dicts = load_dictionaries(directory)
        results[name] = {**weights_equal(dicts, directory),
                         **compare_outputs(dicts, inputs, peer_outputs(directory, inputs_file,
                                                                       work))}  # fmt: skip
        print(f"(b) {name}: weights exact {results[name]['exact']}, "
              f"max rel {results[name]['max_rel']:.2e}", file=sys.stderr)  # fmt: skip
    return results


# -- (c) the attribution graph --------------------------------------------------------------
def train_transcoders(n_layers: int, tokens: int, out: Path) -> tuple[Path, float]:
    cmd = [str(Path(sys.executable).with_name("saedoctor")), "train", "--kind", "transcoder",
           "--architecture", "jumprelu", "--sparsity-penalty", "1", "--tokens", str(tokens),
           "--out", str(out), "--quiet"]  # fmt: skip
    for layer in range(n_layers):
        cmd += ["--layer", str(layer)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return out / "circuit_tracer", time.perf_counter() - start


def attribution_graph(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from saedoctor.activations.model import ensure_default_cached

    train_s = None
    if args.train_dir is not None:
        directory = args.train_dir / "circuit_tracer"
    else:
        directory, train_s = train_transcoders(args.graph_layers, args.train_tokens,
                                               work / "trained")  # fmt: skip
    out = work / "graph.json"
    start = time.perf_counter()
    cmd = ["attribute", str(directory), "--model", str(ensure_default_cached()),
           "--prompt", args.prompt, "--out", str(out)]  # fmt: skip
    if args.max_feature_nodes:
        cmd += ["--max-feature-nodes", str(args.max_feature_nodes)]
    proc = ct_env.run_worker(cmd, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"ran": False, "why": proc.stderr[-3000:], "wall_s": wall}
    train_file = directory.parent / "train.json"
    train_cfg = json.loads(train_file.read_text()) if train_file.is_file() else None
    return {"ran": True, "transcoders": str(directory), "n_transcoder_layers": args.graph_layers,
            "train_tokens": (train_cfg or {}).get("tokens", args.train_tokens),
            "train_s": train_s, "prompt": args.prompt, "max_feature_nodes": args.max_feature_nodes,
            "worker_wall_s": wall, "train_run": _brief_run(train_cfg),
            **graph_timings(json.loads(out.read_text()))}  # fmt: skip


GRAPH_TIME_KEYS = ("load_s", "attribute_s", "scores_s")
ONE_GRAPH = "one graph: on 2 CPU cores a 30-layer graph takes about half an hour"


def graph_timings(graph: dict[str, Any]) -> dict[str, Any]:
    """The worker's seconds as timing blocks (one run each, with the reason)."""
    return {k: _results.timing([v], allow_fewer=ONE_GRAPH) if k in GRAPH_TIME_KEYS else v
            for k, v in graph.items()}  # fmt: skip


def _brief_run(run: Any) -> Any:
    # The training run file is large; only what decides the transcoders is kept.
    if not isinstance(run, dict):
        return None
    return {k: run[k] for k in ("config", "tokens", "wall_time_s", "steps") if k in run} or None


# -- report ---------------------------------------------------------------------------------
def markdown(payload: dict[str, Any]) -> str:
    lines = [f"# circuit-tracer {payload['peer_versions']['circuit-tracer']} agreement", "",
             f"{payload['layers']} layers, {payload['d_model']} -> {payload['d_transcoder']}, "
             f"{payload['rows']} rows per layer; tolerance {TOLERANCE:g} relative.", "",
             "| direction | variant | weights exact | max abs | max rel | fire mismatches |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for key, label in (("ours_to_theirs", "saedoctor → circuit-tracer"),
                       ("theirs_to_ours", "circuit-tracer → saedoctor")):  # fmt: skip
        for name, r in payload[key].items():
            exact = {True: "yes", False: "NO"}.get(r.get("exact"), "—")
            lines.append(f"| {label} | {name} | {exact} | {r['max_abs']:.2e} | "
                         f"{r['max_rel']:.2e} | {r['fire_mismatch']} |")  # fmt: skip
    g = payload.get("graph")
    if g:
        lines += ["", "## Attribution graph", ""]
        if g.get("ran"):
            tokens = g["train_tokens"] or (g["train_run"] or {}).get("tokens")
            lines += [f"- {g['n_transcoder_layers']} saedoctor-trained jumprelu transcoders "
                      f"({tokens} tokens), prompt {g['prompt']!r} ({g['n_tokens']} tokens)",
                      f"- replacement score {g['replacement_score']:.4f}, completeness "
                      f"{g['completeness_score']:.4f}, error-node influence share "
                      f"{g['error_influence_share']:.4f}",
                      f"- {g['n_active_features']} active features, "
                      f"{g['n_selected_features']} in the graph",
                      f"- wall time (one run): load {g['load_s']['median']:.1f} s, attribute "
                      f"{g['attribute_s']['median']:.1f} s (worker total "
                      f"{g['worker_wall_s']:.1f} s)"]  # fmt: skip
        else:
            lines += [f"Did not run: {g.get('why', '')}"]
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("--layers", type=int, default=3, help="layers per random set")
    p.add_argument("--d-model", type=int, default=576)
    p.add_argument("--d-transcoder", type=int, default=2304)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--graph-layers", type=int, default=30)
    p.add_argument("--train-tokens", type=int, default=20000)
    p.add_argument("--train-dir", type=Path, default=None,
                   help="a `saedoctor train --kind transcoder` output to use instead of training")
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    # Without a cap, circuit-tracer allocates a dense float32 [features, nodes] edge matrix
    # over every active feature: 641 GB for the 20 000-token transcoders (~400k active).
    p.add_argument("--max-feature-nodes", type=int, default=2048)
    p.add_argument("--skip-graph", action="store_true")
    _results.add_arguments(p)
    args = p.parse_args()
    if args.quick:
        args.rows, args.layers, args.d_model, args.d_transcoder = 256, 2, 64, 128
        args.graph_layers, args.train_tokens = 2, 2048
    return args


def main() -> int:
    started = time.time()
    args = parse_args()
    python = ct_env.ensure_env()
    with tempfile.TemporaryDirectory(prefix="ct-agreement-") as tmp:
        work = Path(tmp)
        inputs = lm_like_inputs(args.layers, args.rows, args.d_model, args.seed + 100)
        inputs_file = work / "inputs.safetensors"
        save_file(inputs, str(inputs_file))
        payload: dict[str, Any] = {
            "peer_versions": ct_env.peer_versions(python), "tolerance_rel": TOLERANCE,
            "rows": args.rows, "layers": args.layers, "d_model": args.d_model,
            "d_transcoder": args.d_transcoder, "seed": args.seed,
            "ours_to_theirs": check_ours_to_theirs(args, work, inputs_file, inputs),
            "theirs_to_ours": check_theirs_to_ours(args, work, inputs_file, inputs),
        }  # fmt: skip
        if not args.skip_graph and args.d_model == 576:
            payload["graph"] = attribution_graph(args, work)
    sides = [*payload["ours_to_theirs"].values(), *payload["theirs_to_ours"].values()]
    payload["max_rel"] = max(r["max_rel"] for r in sides)
    payload["all_weights_exact"] = all(r["exact"] for r in payload["theirs_to_ours"].values())
    payload["passed"] = payload["max_rel"] <= TOLERANCE and payload["all_weights_exact"]
    _results.write_result(NAME, payload, _results.out_dir(args), started, quick=args.quick,
                          markdown=markdown(payload))  # fmt: skip
    print(markdown(payload))
    return 0 if payload["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
