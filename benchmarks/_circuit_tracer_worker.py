"""Runs in circuit-tracer's own venv (see `_circuit_tracer_env.py`); imports circuit_tracer only.

Subcommands:

    write-plt OUT --n-layers N --d-model D --d-transcoder T [--skip]
              [--activation jumprelu|relu|topk] [--k K] [--seed S]
    write-clt OUT --n-layers N --d-model D --d-transcoder T [--activation jumprelu|relu] [--seed S]
    encode-decode DIR --inputs X.safetensors --out Y.safetensors
    attribute DIR --model HF_DIR --prompt TEXT --out RESULT.json [--max-feature-nodes N]
              [--batch-size B] [--max-n-logits K]

The writers build random transcoders with circuit-tracer's own classes and save them with
circuit-tracer's own `to_safetensors`, then add the `config.yaml` that
`circuit_tracer.utils.caching.load_transcoders_from_cache` reads (circuit-tracer has no public
writer for that file on its own). encode-decode loads DIR with that loader, reads `x_{i}`
[n, d_model] (the MLP input at layer i) and writes `acts_{i}` [n, d_transcoder] and
`recon_{i}` [n, d_model] in float32, as circuit-tracer computes them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from circuit_tracer.transcoder import SingleLayerTranscoder, TranscoderSet
from circuit_tracer.transcoder.activation_functions import JumpReLU, TopK
from circuit_tracer.transcoder.cross_layer_transcoder import CrossLayerTranscoder, load_clt
from circuit_tracer.utils.caching import load_transcoders_from_cache
from safetensors.torch import load_file, save_file

CPU = torch.device("cpu")
# Keys circuit-tracer's loaders ignore; the writer records them because TopK's k is not part of
# circuit-tracer's on-disk format and encode-decode needs it back.
EXTRA_ACTIVATION_KEY = "saedoctor_activation"
EXTRA_K_KEY = "saedoctor_topk_k"


def _normal(gen: torch.Generator, shape: tuple[int, ...], scale: float) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float32) * scale


def _thresholds(gen: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    # Strictly positive, and spread so that some features fire on unit-scale inputs, some not.
    return 0.1 + 0.9 * torch.rand(shape, generator=gen, dtype=torch.float32)


def _plt_activation(args: argparse.Namespace, gen: torch.Generator, d_t: int) -> object:
    if args.activation == "jumprelu":
        # Bandwidth 0.1, as circuit-tracer's own loaders construct it.
        return JumpReLU(_thresholds(gen, (d_t,)), 0.1)
    if args.activation == "topk":
        return TopK(args.k)
    return F.relu


def _fill_plt(tc: SingleLayerTranscoder, gen: torch.Generator, d_model: int, d_t: int) -> None:
    # Encoder rows of norm ~1 give unit-scale pre-activations on unit-scale inputs.
    with torch.no_grad():
        tc.W_enc.copy_(_normal(gen, (d_t, d_model), d_model**-0.5))
        tc.W_dec.copy_(_normal(gen, (d_t, d_model), d_t**-0.5))
        tc.b_enc.copy_(_normal(gen, (d_t,), 0.1))
        tc.b_dec.copy_(_normal(gen, (d_model,), 0.1))
        if tc.W_skip is not None:
            tc.W_skip.copy_(_normal(gen, (d_model, d_model), 0.3 * d_model**-0.5))


def build_plt(args: argparse.Namespace) -> TranscoderSet:
    gen = torch.Generator().manual_seed(args.seed)
    d_model, d_t = args.d_model, args.d_transcoder
    layers = {}
    for layer in range(args.n_layers):
        act = _plt_activation(args, gen, d_t)
        tc = SingleLayerTranscoder(d_model, d_t, act, layer, skip_connection=args.skip,
                                   device=CPU, dtype=torch.float32)
        _fill_plt(tc, gen, d_model, d_t)
        layers[layer] = tc
    return TranscoderSet(layers, feature_input_hook=args.feature_input_hook,
                         feature_output_hook=args.feature_output_hook, scan=args.scan)


def build_clt(args: argparse.Namespace) -> CrossLayerTranscoder:
    gen = torch.Generator().manual_seed(args.seed)
    n, d_model, d_t = args.n_layers, args.d_model, args.d_transcoder
    act = "jump_relu" if args.activation == "jumprelu" else "relu"
    clt = CrossLayerTranscoder(n, d_t, d_model, activation_function=act, lazy_decoder=False,
                               lazy_encoder=False, feature_input_hook=args.feature_input_hook,
                               feature_output_hook=args.feature_output_hook, scan=args.scan,
                               device=CPU, dtype=torch.float32)
    with torch.no_grad():
        clt.W_enc.copy_(_normal(gen, (n, d_t, d_model), d_model**-0.5))
        clt.b_enc.copy_(_normal(gen, (n, d_t), 0.1))
        clt.b_dec.copy_(_normal(gen, (n, d_model), 0.1))
        for i, w_dec in enumerate(clt.W_dec):
            w_dec.copy_(_normal(gen, (d_t, n - i, d_model), (d_t * (i + 1)) ** -0.5))
        if act == "jump_relu":
            clt.activation_function.threshold.copy_(_thresholds(gen, (n, 1, d_t)))
    return clt


def _write_config(out: Path, kind: str, args: argparse.Namespace) -> None:
    # The keys `load_transcoders_from_cache` reads (model_kind, the two hooks, scan), plus
    # model_name as in circuit-tracer's published configs.
    config = {
        "model_kind": kind,
        "model_name": args.model_name,
        "feature_input_hook": args.feature_input_hook,
        "feature_output_hook": args.feature_output_hook,
        "scan": args.scan,
    }
    if args.activation == "topk":
        config[EXTRA_ACTIVATION_KEY] = "topk"
        config[EXTRA_K_KEY] = args.k
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def cmd_write_plt(args: argparse.Namespace) -> None:
    if args.activation == "topk" and not args.k:
        raise SystemExit("--activation topk needs --k")
    out = Path(args.out)
    build_plt(args).to_safetensors(str(out))  # layer_{i}.safetensors
    _write_config(out, "transcoder_set", args)
    print(f"wrote transcoder_set ({args.n_layers} layers) to {out}")


def cmd_write_clt(args: argparse.Namespace) -> None:
    # circuit-tracer 0.5.0's CLT writer and loader have no W_skip and no TopK: refuse rather
    # than write something it would load differently.
    if args.skip or args.activation == "topk":
        raise SystemExit("circuit-tracer 0.5.0 cannot save or load a CLT with W_skip or TopK")
    out = Path(args.out)
    build_clt(args).to_safetensors(str(out))  # W_enc_{i}, W_dec_{i}.safetensors
    _write_config(out, "cross_layer_transcoder", args)
    print(f"wrote cross_layer_transcoder ({args.n_layers} layers) to {out}")


def load_dir(directory: Path) -> TranscoderSet | CrossLayerTranscoder:
    """Load with circuit-tracer's loaders only; no hub access is needed for a local directory."""
    directory = directory.resolve()
    kw = {"device": CPU, "dtype": torch.float32}
    if (directory / "config.yaml").is_file():
        # The cache path is cache_dir / hf_ref, so a local directory is (parent, name).
        model, config = load_transcoders_from_cache(directory.name, cache_dir=directory.parent,
                                                    **kw)
        _restore_topk(model, config)
        return model
    if (directory / "W_enc_0.safetensors").is_file():
        return load_clt(str(directory), **kw)
    raise SystemExit(f"{directory}: no config.yaml and no W_enc_0.safetensors")


def _restore_topk(model: TranscoderSet | CrossLayerTranscoder, config: dict) -> None:
    # circuit-tracer loads a layer file without a threshold as ReLU; TopK's k lives only in our
    # extra config key, so it is put back here.
    if config.get(EXTRA_ACTIVATION_KEY) != "topk" or not isinstance(model, TranscoderSet):
        return
    for tc in model:
        tc.activation_function = TopK(int(config[EXTRA_K_KEY]))


def _plt_outputs(model: TranscoderSet, xs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for i, (tc, x) in enumerate(zip(model, xs, strict=True)):
        acts = tc.encode(x)
        # decode(acts, x) is SingleLayerTranscoder.forward: acts @ W_dec + b_dec + skip(x).
        out[f"acts_{i}"] = acts
        out[f"recon_{i}"] = tc.decode(acts, x)
    return out


def _clt_reference_decode(clt: CrossLayerTranscoder, acts: torch.Tensor) -> torch.Tensor:
    # Same sum as CrossLayerTranscoder.compute_reconstruction, layer by layer, with the
    # decoder rows read through circuit-tracer's own accessor.
    recon = clt.b_dec[:, None].expand(-1, acts.shape[1], -1).clone()
    for src in range(clt.n_layers):
        w_dec = clt._get_decoder_vectors(src)  # [d_t, n_layers - src, d_model]
        recon[src:] += torch.einsum("nf,fld->lnd", acts[src], w_dec)
    return recon


def _clt_outputs(clt: CrossLayerTranscoder, xs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    x = torch.stack(xs)  # [n_layers, n, d_model]
    acts = clt.encode(x)
    recon = None
    if acts.any():
        recon = clt.decode(acts.to_sparse(), x)
    # CLT.compute_reconstruction sizes its output by the last position with an active feature
    # (and fails when none is active), so such inputs get the same sum computed per layer.
    if recon is None or recon.shape != x.shape:
        print("note: CLT decode fell back to the per-layer sum (trailing inactive positions)",
              file=sys.stderr)
        recon = _clt_reference_decode(clt, acts)
    out = {f"acts_{i}": acts[i] for i in range(clt.n_layers)}
    out.update({f"recon_{i}": recon[i] for i in range(clt.n_layers)})
    return out


def cmd_encode_decode(args: argparse.Namespace) -> None:
    model = load_dir(Path(args.directory))
    inputs = load_file(args.inputs)
    n_layers = model.n_layers
    xs = [inputs[f"x_{i}"].to(torch.float32) for i in range(n_layers)]
    with torch.no_grad():
        if isinstance(model, CrossLayerTranscoder):
            out = _clt_outputs(model, xs)
        else:
            out = _plt_outputs(model, xs)
    save_file({k: v.to(torch.float32).contiguous() for k, v in out.items()}, args.out)
    print(f"wrote {len(out)} tensors ({type(model).__name__}, {n_layers} layers) to {args.out}")


def _loadable_model_dir(source: Path, tmp: Path) -> Path:
    """`source` as transformers 4.57 can load it: a folder saved by transformers 5 names its
    tokenizer class `TokenizersBackend`, which 4.57 does not have; the same tokenizer.json
    loads as `PreTrainedTokenizerFast`. Other files are linked, not copied."""
    import json

    target = tmp / source.name
    target.mkdir()
    for f in source.iterdir():
        (target / f.name).symlink_to(f.resolve())
    tok_cfg = source / "tokenizer_config.json"
    if tok_cfg.is_file():
        cfg = json.loads(tok_cfg.read_text())
        if cfg.get("tokenizer_class") == "TokenizersBackend":
            cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        (target / tok_cfg.name).unlink()
        (target / tok_cfg.name).write_text(json.dumps(cfg))
    return target


def cmd_attribute(args: argparse.Namespace) -> None:
    # Imported here: the replacement model pulls in nnsight, which the other commands skip.
    import json
    import tempfile
    import time

    from circuit_tracer import ReplacementModel, attribute
    from circuit_tracer.graph import compute_graph_scores, compute_influence, normalize_matrix

    start = time.perf_counter()
    transcoders = load_dir(Path(args.directory))
    tmp = tempfile.TemporaryDirectory(prefix="ct-model-")
    model_dir = _loadable_model_dir(Path(args.model), Path(tmp.name))
    model = ReplacementModel.from_pretrained_and_transcoders(
        str(model_dir), transcoders, backend="nnsight", device=CPU, dtype=torch.float32)
    loaded = time.perf_counter()
    graph = attribute(args.prompt, model, max_n_logits=args.max_n_logits,
                      batch_size=args.batch_size, max_feature_nodes=args.max_feature_nodes)
    attributed = time.perf_counter()
    replacement, completeness = compute_graph_scores(graph)
    # Node layout (graph.py): selected features, then n_layers x n_tokens error nodes, then
    # token embeddings, then logits; the error share is the error nodes' part of the
    # logit-weighted influence over every non-logit node.
    n_feat, n_tok = len(graph.selected_features), len(graph.input_tokens)
    n_err = n_tok * graph.cfg.n_layers
    weights = torch.zeros(graph.adjacency_matrix.shape[0])
    weights[-len(graph.logit_targets):] = graph.logit_probabilities
    influence = compute_influence(normalize_matrix(graph.adjacency_matrix), weights)
    source = influence[: n_feat + n_err + n_tok]
    result = {
        "n_tokens": n_tok,
        "n_layers": graph.cfg.n_layers,
        "n_active_features": int(graph.active_features.shape[0]),
        "n_selected_features": n_feat,
        "n_error_nodes": n_err,
        "n_logits": len(graph.logit_targets),
        "replacement_score": replacement,
        "completeness_score": completeness,
        "error_influence_share": float(source[n_feat:n_feat + n_err].sum() / source.sum()),
        "feature_influence_share": float(source[:n_feat].sum() / source.sum()),
        "load_s": loaded - start,
        "attribute_s": attributed - loaded,
        "scores_s": time.perf_counter() - attributed,
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


def _add_writer(sub: argparse._SubParsersAction, name: str, func, activations: list[str]) -> None:
    p = sub.add_parser(name)
    p.add_argument("out")
    p.add_argument("--n-layers", type=int, required=True)
    p.add_argument("--d-model", type=int, required=True)
    p.add_argument("--d-transcoder", type=int, required=True)
    p.add_argument("--skip", action="store_true")
    p.add_argument("--activation", choices=activations, default="jumprelu")
    p.add_argument("--k", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    # TransformerLens hook names inside each block; these two are the ones circuit-tracer's
    # Llama transcoders use (its ReplacementMLP hooks, present for every architecture).
    p.add_argument("--feature-input-hook", default="mlp.hook_in")
    p.add_argument("--feature-output-hook", default="mlp.hook_out")
    p.add_argument("--model-name", default="local")
    p.add_argument("--scan", default="saedoctor-fixture")
    p.set_defaults(func=func)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_writer(sub, "write-plt", cmd_write_plt, ["jumprelu", "relu", "topk"])
    _add_writer(sub, "write-clt", cmd_write_clt, ["jumprelu", "relu", "topk"])
    p = sub.add_parser("encode-decode")
    p.add_argument("directory")
    p.add_argument("--inputs", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_encode_decode)
    p = sub.add_parser("attribute")
    p.add_argument("directory")
    p.add_argument("--model", required=True, help="local HF model directory")
    p.add_argument("--prompt", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--max-feature-nodes", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--max-n-logits", type=int, default=10)
    p.set_defaults(func=cmd_attribute)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
