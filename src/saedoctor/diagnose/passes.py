"""The passes of a run: the main one over `corpus` (every metric); a short one over the
first batches when some SAE has always-on features (their strongest / weakest tokens); one
over `compare_corpus` when asked (training-data mismatch); or cached activations instead."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from saedoctor import distributed
from saedoctor.activations.unembed import unembedding
from saedoctor.diagnose.cards import CardText
from saedoctor.diagnose.clt import NAME as CLT_SECTION
from saedoctor.diagnose.clt import clt_entry, clt_groups, shadow_units
from saedoctor.diagnose.model_pass import ModelPass, feed
from saedoctor.diagnose.options import DiagnoseOptions
from saedoctor.diagnose.preflight import preflight_on_activations, run_preflight
from saedoctor.diagnose.transcoder_set import set_entry, splice_set
from saedoctor.diagnose.units import SAEUnderTest, check_against_model, suite_sink
from saedoctor.errors import InputError
from saedoctor.metrics.finite import RowOrigin
from saedoctor.progress import stderr_console, token_progress


def run_on_model(opts: DiagnoseOptions, units: list[SAEUnderTest], loaded_model: Any = None,
                 policy: Any = None) -> dict[str, Any]:  # fmt: skip
    """The passes on a model; `policy` (the grading policy) decides when `--tokens auto`
    has streamed enough."""
    from saedoctor.activations.model import follow_sites, load_model

    loaded = loaded_model or load_model(opts.model, device=opts.device, dtype=opts.dtype,
                                        device_map=opts.device_map, quantize=opts.quantize)
    if loaded_model is not None or opts.device_map is not None or opts.quantize is not None:
        follow_sites(loaded, units)  # a model placed by the caller: SAEs go where it is
    check_against_model(units, loaded.name, loaded.n_layers, loaded.d_model)
    preflight = run_preflight(opts, loaded, units)  # before minutes of streaming
    tset = splice_set(units) if opts.downstream else None
    groups = [group for group, _ in clt_groups(units)]
    accumulators = ([] if tset is None else [tset]) + groups
    state = main_pass_state(opts, loaded, units, accumulators)
    passes = ModelPass(loaded, opts, units, state, tset)
    auto = auto_stop(opts, units, policy)
    passes.stop = auto
    with state.signals():
        if opts.downstream:
            info = passes.run_downstream(opts.corpus, opts.tokens,
                                         "diagnose (with downstream loss)")  # fmt: skip
        else:
            info = passes.run(opts.corpus, opts.tokens, suite_sink, "diagnose")
    # under torchrun: rank 0 goes on
    info = distributed.gather_main_pass(units + accumulators, info, state)
    passes.state, passes.stop = None, None  # the secondary passes rerun from scratch on resume
    if auto is not None:
        info["tokens_auto"] = auto.describe(info)
    _require_tokens(info, opts.corpus)
    if auto is None and info["sequences"] < math.ceil(opts.tokens / opts.context):
        info["corpus_ended"] = True  # fewer tokens than asked for: the report says so
    extras = secondary_passes(passes, units, state, info)
    model_info = {"name": loaded.name, "n_layers": loaded.n_layers, "d_model": loaded.d_model}
    if opts.cards or opts.card_features:
        extras["card_text"] = CardText(loaded.tokenizer, unembedding(loaded.model))
    if tset is not None:
        extras["transcoder_set"] = set_entry(tset)
    if groups:
        extras[CLT_SECTION] = [clt_entry(group) for group in groups]
    return {"model": model_info, **info, **extras, "state_file": state.path,
            "preflight": preflight}  # fmt: skip


def auto_stop(opts: DiagnoseOptions, units: list[SAEUnderTest], policy: Any) -> Any:
    """The `--tokens auto` stop rule, or None (a fixed token count)."""
    if not opts.auto_tokens:
        return None
    from saedoctor.diagnose.auto_tokens import AutoStop
    from saedoctor.health import load_policy

    budget = opts.downstream_tokens if opts.downstream else 0
    return AutoStop(policy or load_policy(opts.policy), units, opts.auto_width, opts.tokens,
                    budget)  # fmt: skip


def secondary_passes(passes: ModelPass, units: list[SAEUnderTest], state: Any,
                     totals: dict[str, int]) -> dict[str, Any]:  # fmt: skip
    """Explanations, first-letter absorption, the comparison corpus: not resumable
    themselves, but an interrupt during the long ones keeps the finished main pass."""
    from saedoctor.diagnose_state import DiagnoseInterrupted

    opts = passes.opts
    if opts.first_letter_absorption or opts.compare_corpus or state.path.exists():
        state.save(totals)
    try:
        extras: dict[str, Any] = {"explanations": explain_on_model(passes, units)}
        if opts.first_letter_absorption:
            extras["first_letter"] = first_letter_on_model(passes.loaded, units, opts)
        if opts.compare_corpus:
            extras["comparisons"] = compare_on_model(passes, units)
    except KeyboardInterrupt as err:
        if isinstance(err, DiagnoseInterrupted) or not state.path.exists():
            raise
        raise DiagnoseInterrupted(state.path, totals["tokens_processed"], opts.tokens) from None
    return extras


def main_pass_state(opts: DiagnoseOptions, loaded: Any, units: list[SAEUnderTest],
                    extras: list[Any] = ()) -> Any:  # fmt: skip
    """The saver / resumer of the main pass; its file is `opts.state_file` or in the cache.
    `extras` hold accumulators beyond the units' (a transcoder set's)."""
    from saedoctor.diagnose_state import MainPassState, cached_state_path, identity

    tokenizer = loaded.tokenizer
    model = {"name": loaded.name, "n_layers": loaded.n_layers, "d_model": loaded.d_model,
             "vocab": len(tokenizer), "tokenizer": type(tokenizer).__name__}  # fmt: skip
    ident = identity(opts, model, units)
    path = Path(opts.state_file) if opts.state_file else cached_state_path(ident)
    return MainPassState(path, ident, [*units, *extras], opts.tokens, opts.checkpoint_minutes)


def first_letter_on_model(loaded: Any, units: list[SAEUnderTest], opts: DiagnoseOptions) -> dict:
    """SAEBench's probe-based first-letter absorption, per SAE (lower is better)."""
    from saedoctor.metrics.first_letter import first_letter_absorption

    out = {}
    for unit in units:
        stderr_console.print(f"first-letter absorption: {unit.name}")
        try:
            out[unit.name] = first_letter_absorption(
                loaded.model, loaded.tokenizer, unit.sae, unit.sae.site,
                max_words=opts.first_letter_words, device=opts.device, seed=opts.seed,
            )  # fmt: skip
        except InputError as err:  # e.g. a vocabulary with too few words: say why, go on
            out[unit.name] = {"first_letter_absorption": None, "reason": str(err)}
    return out


def _require_tokens(info: dict[str, int], corpus: str) -> None:
    if info["tokens_counted"] == 0:
        raise InputError(f"corpus {corpus!r}: no counted tokens (all were special tokens?)")


# -- always-on explanations ----------------------------------------------------------------
def explain_on_model(passes: ModelPass, units: list[SAEUnderTest]) -> dict[str, list]:
    from saedoctor.metrics.always_on import FeatureExtremes

    targets = {u.name: u.suite.features.compute()["always_on_features"] for u in units}
    todo = [u for u in units if targets[u.name]]
    if not todo:
        return {u.name: [] for u in units}
    extremes = {u.name: FeatureExtremes(targets[u.name]) for u in todo}
    log = TokenLog(passes.loaded.tokenizer)

    def sink(unit: SAEUnderTest, rows: Any) -> None:
        extremes[unit.name].update(rows.codes)

    sub = ModelPass(passes.loaded, passes.opts, todo)
    budget = min(passes.opts.explain_tokens, passes.opts.tokens)
    sub.run(passes.opts.corpus, budget, sink, "explain always-on", keep=log.keep)
    return {u.name: explanations(u, extremes.get(u.name), log.describe) for u in units}


def explanations(unit: SAEUnderTest, extremes, describe) -> list[dict[str, Any]]:
    from saedoctor.metrics.always_on import attach_tokens, explain_feature

    if extremes is None:
        return []
    feats = unit.suite.features
    density = feats.density()
    mean_act = feats.act_sum.cpu() / feats.fire_count.cpu().clamp(min=1).double()
    out = []
    for j, f in enumerate(extremes.features):
        item = explain_feature(
            f,
            density=float(density[f]),
            mean_activation=float(mean_act[f]),
            act_sq_sum=float(feats.act_sq_sum[f]),
            xhat_sq_sum=float(unit.suite.reconstruction.xhat_sq_sum),
            W_enc=unit.sae.W_enc,
            W_dec=unit.sae.W_dec,
            mean_x=unit.suite.reconstruction.mean_x(),
        )
        attach_tokens(item, extremes, j, describe)
        out.append(item)
    return out


class TokenLog:
    """Counted tokens of a pass, by global index, so extremes can be shown in context."""

    def __init__(self, tokenizer: Any, before: int = 6, after: int = 2) -> None:
        self.tokenizer, self.before, self.after = tokenizer, before, after
        self.batches: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        self.count = 0

    def keep(self, sb: Any) -> None:
        self.batches.append((self.count, sb.positions.cpu(), sb.input_ids.cpu()))
        self.count += sb.positions.numel()

    def describe(self, index: int) -> dict[str, Any]:
        start, positions, ids = next(b for b in reversed(self.batches) if b[0] <= index)
        seq, pos = divmod(int(positions[index - start]), ids.shape[1])
        row = ids[seq].tolist()
        decode = self.tokenizer.decode
        token = decode(row[pos : pos + 1])
        context = (
            decode(row[max(0, pos - self.before) : pos])
            + f"[[{token}]]"
            + decode(row[pos + 1 : pos + 1 + self.after])
        )
        return {"token": token, "context": context, "sequence": seq, "position": pos}


# -- training-data mismatch ----------------------------------------------------------------
def compare_on_model(passes: ModelPass, units: list[SAEUnderTest]) -> dict[str, dict]:
    opts = passes.opts
    shadows = shadow_units(units, opts)
    sub = ModelPass(passes.loaded, opts, shadows)
    info = sub.run(opts.compare_corpus, opts.tokens, suite_sink, "compare corpus")
    _require_tokens(info, opts.compare_corpus)
    return {
        u.name: corpus_comparison(u, s, opts.compare_corpus, info["tokens_counted"])
        for u, s in zip(units, shadows, strict=True)
    }


def corpus_comparison(
    main: SAEUnderTest, other: SAEUnderTest, corpus: str, counted: int
) -> dict[str, Any]:
    from saedoctor.metrics.density_shift import density_shift, jsd_interval
    from saedoctor.metrics.jackknife import independent_difference

    # Absorption is a property of the decoder, not of the corpus: not recomputed here.
    a, b = main.suite.compute(), other.suite.compute()
    dead = main.suite.features.dead_threshold
    shift = density_shift(torch.tensor(a["density"]), torch.tensor(b["density"]), dead)
    ba, bb = main.suite.blocked, other.suite.blocked
    shift["density_jsd_interval"] = jsd_interval(ba.fires.cpu(), ba.tokens.cpu(),
                                                 bb.fires.cpu(), bb.tokens.cpu(),
                                                 shift["density_jsd"])  # fmt: skip
    metrics = {k: v for k, v in b.items() if k not in _BULKY}
    deltas = {
        k: v - a[k]
        for k, v in metrics.items()
        if isinstance(v, int | float) and isinstance(a.get(k), int | float)
    }
    ia, ib = a.get("intervals") or {}, b.get("intervals") or {}
    delta_intervals = {k: independent_difference(a[k], ia[k], metrics[k], ib[k])
                       for k in deltas if k in ia and k in ib}  # fmt: skip
    return {"corpus": corpus, "tokens_counted": counted, "metrics": metrics, "deltas": deltas,
            "delta_intervals": delta_intervals, **shift}  # fmt: skip


_BULKY = ("density", "density_histogram", "mean_activation_when_active", "absorption",
          "absorption_method", "absorption_features", "absorption_reason", "intervals",
          "interval_blocks", "uncertain_features", "interval_method",
          "density_interval_method")  # fmt: skip


# -- cached activations --------------------------------------------------------------------
def run_on_activations(opts: DiagnoseOptions, units: list[SAEUnderTest]) -> dict[str, Any]:
    from saedoctor.activations.cached import DEFAULT_CONTEXT as CACHED_CONTEXT
    from saedoctor.activations.cached import iter_cached_batches, load_cached_activations

    acts = load_cached_activations(opts.activations)
    d_in = acts.shape[-1]
    for unit in units:
        if unit.sae.is_transcoder:
            raise InputError(
                f"{unit.path}: a transcoder needs its input and its target (the MLP output); "
                f"--activations {opts.activations} holds one site: diagnose it on --model"
            )
        if unit.sae.cfg.d_in != d_in:
            raise InputError(
                f"{unit.path}: SAE d_in={unit.sae.cfg.d_in} but {opts.activations} holds "
                f"activations of width {d_in}"
            )
    preflight = preflight_on_activations(opts, units, acts)
    counted = 0
    seq_len = acts.shape[1] if acts.dim() == 3 else CACHED_CONTEXT
    with token_progress(opts.quiet) as progress:
        task = progress.add_task("diagnose", total=acts.numel() // d_in)
        for x, seq_ids in iter_cached_batches(acts, opts.batch_size * opts.context):
            where = RowOrigin(0, seq_len, torch.arange(counted, counted + x.shape[0]))
            counted += x.shape[0]
            progress.update(task, advance=x.shape[0])
            for unit in units:  # the file was checked finite: only an SAE output can fail
                feed(unit, x.to(opts.device), seq_ids, suite_sink, where)
    info = {"model": None, "tokens_processed": counted, "tokens_counted": counted,
            "preflight": preflight}  # fmt: skip
    _require_tokens(info, str(opts.activations))
    info["explanations"] = {u.name: explanations_without_tokens(u) for u in units}
    return info


def explanations_without_tokens(unit: SAEUnderTest) -> list[dict[str, Any]]:
    from saedoctor.metrics.always_on import FeatureExtremes

    ids = unit.suite.features.compute()["always_on_features"]
    items = explanations(unit, FeatureExtremes(ids) if ids else None, lambda i: {})
    for item in items:  # no tokens without a model: say so instead of showing empty lists
        item["tokens_examined"] = 0
        item["tokens_note"] = "cached activations: no token text available"
    return items
