"""The main job: stream activations once, feed every SAE, measure every health metric.

Passes: the main one over `corpus` (every metric); a short one over the first batches of the
same corpus when some SAE has always-on features (their strongest / weakest tokens); and one
over `compare_corpus` when asked (training-data mismatch). Each pass runs one forward per
batch for all SAEs, stopping at the deepest block any of them needs.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from saedoctor import defaults, distributed
from saedoctor.errors import InputError
from saedoctor.metrics.downstream import Downstream
from saedoctor.metrics.finite import RowOrigin, finite_output_rows, finite_rows
from saedoctor.metrics.suite import MetricSuite
from saedoctor.progress import stderr_console, token_progress
from saedoctor.sae.codes import Codes
from saedoctor.sae.model import SAE
from saedoctor.sae.site import SITE_KINDS

DTYPES = ("float32", "bfloat16", "float16", "float64")


@dataclass
class DiagnoseOptions:
    """Everything `saedoctor diagnose` takes; defaults are the embedded default run."""

    model: str | None = None
    saes: list[str] = field(default_factory=list)
    layer: int | None = None
    site: str | None = None
    corpus: str = defaults.DEFAULT_EVAL_CORPUS
    compare_corpus: str | None = None
    text_field: str = "text"
    tokens: int = defaults.DEFAULT_EVAL_TOKENS
    context: int = defaults.DEFAULT_CONTEXT
    batch_size: int = defaults.DEFAULT_BATCH_SIZE
    device: str = "cpu"
    dtype: str = "float32"
    activations: str | None = None
    include_special: bool = False
    always_on_threshold: float = 0.80
    explain_tokens: int = 16_384
    downstream: bool = True
    first_letter_absorption: bool = False
    first_letter_words: int = 4000
    policy: str | None = None
    seed: int = 0
    # A model larger than one device: accelerate's device_map ("auto" or a dict), and/or
    # bitsandbytes "8bit" / "4bit" weights; each SAE then runs on its site's device.
    device_map: str | dict | None = None
    quantize: str | None = None
    quiet: bool = False
    # Interrupt / resume of the main pass (see saedoctor.diagnose_state). `state_file` None:
    # in the cache dir, named by a fingerprint of the inputs. `keep_state`: leave the file for
    # a caller that deletes it only once its report is safely written.
    resume: bool = False
    state_file: str | None = None
    checkpoint_minutes: float = 5.0
    keep_state: bool = False

    def validate(self) -> None:
        for name in ("tokens", "context", "batch_size", "explain_tokens"):
            if getattr(self, name) <= 0:
                raise InputError(f"--{name.replace('_', '-')}: expected a positive integer")
        if self.site is not None and self.site not in SITE_KINDS:
            raise InputError(f"--site {self.site!r}: expected one of {', '.join(SITE_KINDS)}")
        if self.dtype not in DTYPES:
            raise InputError(f"--dtype {self.dtype!r}: expected one of {', '.join(DTYPES)}")
        if not 0 < self.always_on_threshold <= 1:
            raise InputError("--always-on-threshold: expected a fraction in (0, 1]")
        if self.first_letter_absorption and self.activations is not None:
            raise InputError("--first-letter-absorption needs a model: not with --activations")
        if self.compare_corpus is not None and self.activations is not None:
            raise InputError("--compare-corpus needs a model: it cannot be used with --activations")
        if self.checkpoint_minutes < 0:
            raise InputError("--checkpoint-minutes: expected a number of minutes >= 0")
        if self.resume and self.activations is not None:
            raise InputError("--resume applies to a run on a model: not with --activations")


@dataclass
class SAEUnderTest:
    name: str
    path: str
    sae: SAE
    suite: MetricSuite
    downstream: Downstream = field(default_factory=lambda: Downstream())


# A sink receives, per SAE and batch: the unit, x, x̂, codes and the batch's sequence ids.
Sink = Callable[[SAEUnderTest, torch.Tensor, torch.Tensor, Codes, torch.Tensor], None]


def load_saes(opts: DiagnoseOptions) -> list[SAEUnderTest]:
    from saedoctor.sae.loaders import load_sae

    units = []
    for path in opts.saes:
        sae = load_sae(path, layer=opts.layer, site=opts.site, device=opts.device)
        if sae.site is None and opts.activations is None:
            raise InputError(f"{path}: the SAE's config names no layer; pass --layer (and --site)")
        units.append(SAEUnderTest(_unit_name(sae, path), str(path), sae, new_suite(sae, opts)))
    names = [u.name for u in units]
    for i, unit in enumerate(units):
        if names.count(unit.name) > 1:
            unit.name = f"{unit.name}#{i}"
    return units


def _unit_name(sae: SAE, path: str) -> str:
    site = sae.site.hook_name if sae.site else "unsited"
    return f"{Path(path).name}:{site}"


def new_suite(sae: SAE, opts: DiagnoseOptions) -> MetricSuite:
    return MetricSuite(sae.cfg.d_in, sae.cfg.d_sae, always_on_threshold=opts.always_on_threshold)


def suite_sink(unit: SAEUnderTest, x, x_hat, codes, seq_ids) -> None:
    unit.suite.update(x, x_hat, codes, seq_ids)


# -- passes over a model ------------------------------------------------------------------
@dataclass
class ModelPass:
    """One streaming pass of a corpus through the model, feeding every SAE.

    `state` (the main pass only) saves the accumulators between batches and resumes them."""

    loaded: Any
    opts: DiagnoseOptions
    units: list[SAEUnderTest]
    state: Any = None  # saedoctor.diagnose_state.MainPassState

    def run(self, corpus: str, tokens: int, sink: Sink, label: str, keep=None) -> dict[str, int]:
        from saedoctor.activations.stream import site_batches

        totals: dict[str, int] = {}
        sites = sorted({u.sae.site for u in self.units})  # a fixed order, run after run

        def step(batch: Any) -> None:
            for sb in site_batches(self.loaded.model, sites, [batch], self.opts.device):
                where = RowOrigin(batch.first_sequence, batch.input_ids.shape[1], sb.positions)
                for unit in self.units:
                    feed(unit, sb.acts[unit.sae.site], sb.seq_ids, sink, where)
                if keep is not None:  # after feeding: a batch retried in halves is kept once
                    keep(sb)

        for batch in self._tracked(corpus, tokens, label, totals):
            self._guarded(batch, step)
        return totals

    def run_downstream(self, corpus: str, tokens: int, label: str) -> dict[str, int]:
        """The main pass with loss recovered / KL: one clean forward to the logits per batch,
        one patched tail per SAE and one zero-ablated tail per site."""
        from saedoctor.activations.splice import Splicer

        totals: dict[str, int] = {}
        splicer = Splicer(self.loaded.model, sorted({u.sae.site for u in self.units}))

        def step(batch: Any) -> None:
            if batch.counted.any():  # a half of a split batch may have nothing counted
                downstream_batch(splicer, self.units, batch, self.opts.device)

        primed = False
        for batch in self._tracked(corpus, tokens, label, totals):
            if not primed and batch.first_sequence > 0:  # resumed after skipping batches
                self._prime(splicer, corpus, tokens)
            primed = True
            if batch.counted.any():
                self._guarded(batch, step)
        return totals

    @torch.inference_mode()
    def _prime(self, splicer: Any, corpus: str, tokens: int) -> None:
        """The splicer makes one-off checks on the first batch it sees (e.g. whether the
        zero-ablated logits are the same at every position, then reused): a resumed pass
        replays them on the corpus's first batch, so that every later batch is computed
        exactly as in an uninterrupted pass."""
        device = self.opts.device
        first = next((b for b in self._batches(corpus, tokens) if b.counted.any()), None)
        if first is None:
            return
        splicer.clean(first.input_ids.to(device))
        counted = first.counted.to(device)
        for site in sorted({u.sae.site for u in self.units}):
            splicer.zero_ablated(site, counted)

    def _tracked(self, corpus: str, tokens: int, label: str, totals: dict[str, int]) -> Iterator:
        """Token batches with a progress bar, counting into `totals` as they go; with `state`,
        resumes after the batches already done and saves between batches."""
        state = self.state
        if state is None:
            totals.update(tokens_processed=0, tokens_counted=0, sequences=0)
            skip = 0
        else:
            skip = state.start(totals, self.opts.resume)
        with token_progress(self.opts.quiet) as progress:
            task = progress.add_task(label, total=tokens, completed=totals["tokens_processed"])
            batches = self._batches(corpus, tokens, skip * self.opts.batch_size)
            for batch in distributed.shard_main_pass(batches, state):  # this rank's share
                totals["tokens_processed"] += batch.input_ids.numel()
                totals["tokens_counted"] += int(batch.counted.sum())
                totals["sequences"] += batch.input_ids.shape[0]
                progress.update(task, advance=batch.input_ids.numel())
                yield batch
                if state is not None:  # the batch is in every accumulator by now
                    state.after_batch(totals)

    def _batches(self, corpus: str, tokens: int, skip_sequences: int = 0) -> Iterator:
        from saedoctor.activations.batches import token_batches
        from saedoctor.activations.corpus import iter_documents

        # Skipped sequences are tokenised (the packing depends on them) but never batched.
        return token_batches(
            self.loaded.tokenizer,
            iter_documents(corpus, text_field=self.opts.text_field),
            context=self.opts.context,
            batch_size=self.opts.batch_size,
            max_tokens=tokens,
            include_special=self.opts.include_special,
            skip_sequences=skip_sequences,
            name=corpus,
        )

    def _guarded(self, batch: Any, step: Callable[[Any], None]) -> None:
        """`step(batch)`; out of GPU memory, the accumulators are rolled back and the batch is
        retried in halves (down to one sequence) instead of losing the run."""
        cap = _row_caps.get(self.loaded.model)
        if cap is not None and batch.input_ids.shape[0] > cap:
            for part in split_batch(batch):  # a size that failed before: don't retry it
                self._guarded(part, step)
            return
        snapshot = [(u.suite.state_dict(), u.downstream.state_dict()) for u in self.units]
        try:
            step(batch)
            return
        except torch.cuda.OutOfMemoryError:
            rows = batch.input_ids.shape[0]
        # Outside the except block, so the traceback's frames (and their tensors) are freed.
        if rows == 1:
            raise InputError(
                f"out of GPU memory on {self.opts.device} for one sequence of --context "
                f"{self.opts.context}: use a shorter --context, --dtype bfloat16 or fewer --sae"
            )
        for unit, (suite, down) in zip(self.units, snapshot, strict=True):
            unit.suite.load_state_dict(suite)
            unit.downstream.load_state_dict(down)
        _out_of_memory(self.loaded.model, rows, self.opts.device)
        for part in split_batch(batch):
            self._guarded(part, step)


# Per model: the batch rows above which a forward ran out of GPU memory, shared by the passes.
_row_caps: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _out_of_memory(model: Any, rows: int, device: str) -> None:
    if model not in _row_caps:  # warn once per model
        stderr_console.print(
            f"[bold yellow]warning[/]: out of GPU memory on {device} with {rows} sequences per "
            "batch; continuing in smaller pieces (same metrics, slower): a smaller "
            "--batch-size avoids the retries", highlight=False
        )
    _row_caps[model] = min(_row_caps.get(model, rows), max(1, rows // 2))
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def split_batch(batch: Any) -> list[Any]:
    """Two halves of a token batch; global sequence ids stay those of the whole batch."""
    import dataclasses

    rows = batch.input_ids.shape[0]
    half = (rows + 1) // 2
    parts = []
    for s in (slice(0, half), slice(half, rows)):
        lengths = None if batch.lengths is None else batch.lengths[s]
        first = batch.first_sequence + s.start
        parts.append(dataclasses.replace(batch, input_ids=batch.input_ids[s],
                                         counted=batch.counted[s], lengths=lengths,
                                         first_sequence=first))  # fmt: skip
    return parts


@torch.inference_mode()
def feed(
    unit: SAEUnderTest, x: torch.Tensor, seq_ids: torch.Tensor, sink: Sink,
    where: RowOrigin | None = None,
) -> None:  # fmt: skip
    """The SAE on one batch of rows, then `sink` on the rows whose input and output are
    finite; `where` (when given) locates the rows left out for the report."""
    _, _, kept = encode_finite(unit, x, seq_ids.to(x.device), where)
    if kept[0].shape[0]:
        sink(unit, *kept)


def encode_finite(
    unit: SAEUnderTest, x: torch.Tensor, seq_ids: torch.Tensor, where: RowOrigin | None
) -> tuple[torch.Tensor, torch.Tensor | None, tuple]:
    """(x̂ of every row, the mask of rows kept or None for all, (x, x̂, codes, seq_ids) of the
    kept rows). A row with a non-finite input never reaches the SAE (its x̂ is its own x, so
    a splice leaves it as the model made it); one with a non-finite x̂ or code is dropped
    after. Both are counted in `unit.suite.nonfinite`."""
    track = unit.suite.nonfinite
    x_ok = finite_rows(x)
    x_hat, codes = unit.sae(x if x_ok is None else x[x_ok])
    full = x_hat
    if x_ok is not None:
        track.skip("activation_rows", ~x_ok, where)
        full = x.to(x_hat.dtype).clone()
        full[x_ok] = x_hat
        x, seq_ids = x[x_ok], seq_ids[x_ok]
        where = None if where is None else where.select(x_ok)
    out_ok = finite_output_rows(x_hat, codes)
    if out_ok is not None:
        track.skip("sae_output_rows", ~out_ok, where)
        x, x_hat, codes, seq_ids = x[out_ok], x_hat[out_ok], codes.select(out_ok), seq_ids[out_ok]
    kept = _kept_rows(x_ok, out_ok)
    return full, kept, (x, x_hat, codes, seq_ids)


def _kept_rows(x_ok: torch.Tensor | None, out_ok: torch.Tensor | None) -> torch.Tensor | None:
    """Rows kept of the whole batch from the input mask and the output mask of its finite
    rows; None when both kept everything (the clean case)."""
    if x_ok is None:
        return out_ok
    if out_ok is None:
        return x_ok
    kept = x_ok.clone()
    kept[x_ok] = out_ok
    return kept


@torch.inference_mode()
def downstream_batch(splicer: Any, units: list[SAEUnderTest], batch: Any, device: str) -> None:
    from saedoctor.activations.stream import counted_rows
    from saedoctor.metrics.downstream import CleanDistribution

    input_ids = batch.input_ids.to(device)
    logits, acts = splicer.clean(input_ids)
    counted = batch.counted.to(device)
    kl_mask = counted
    ce_mask = counted[:, :-1] & batch.real()[:, 1:].to(device)
    clean = CleanDistribution(logits, input_ids)
    del logits
    positions, seq_ids = counted_rows(batch)
    positions, seq_ids = positions.to(device), seq_ids.to(device)
    where = RowOrigin(batch.first_sequence, input_ids.shape[1], positions)

    ablated: dict[Any, tuple] = {}
    for unit in units:
        site = unit.sae.site
        site_acts = acts[site]
        flat = site_acts.reshape(-1, site_acts.shape[-1])
        x_hat, kept, rows = encode_finite(unit, flat[positions], seq_ids, where)
        if rows[0].shape[0]:
            unit.suite.update(*rows)
        spliced = flat.clone()
        spliced[positions] = x_hat.to(spliced.dtype)
        sae_scores = clean.score(splicer.patched(site, spliced.view_as(site_acts)))
        if site not in ablated:  # zero-ablation depends on the site only: once per site
            ablated[site] = clean.score(splicer.zero_ablated(site, counted))
        ok = _finite_downstream(clean.ce, sae_scores, ablated[site], positions, kept)
        ce_m, kl_m = (ce_mask, kl_mask) if ok is None else (ce_mask & ok[:, :-1], kl_mask & ok)
        if ok is not None:
            _skip_positions(unit, kl_mask & ~ok, batch.first_sequence)
        unit.downstream.add_clean(clean.ce, ce_m)
        for which, (ce, kl) in (("sae", sae_scores), ("ablated", ablated[site])):
            unit.downstream.add_patched(which, ce, kl, ce_m, kl_m)


def _skip_positions(unit: SAEUnderTest, skipped: torch.Tensor, first_sequence: int) -> None:
    """Count and locate the counted positions `skipped [B, T]` left out of CE/KL sums."""
    flat = torch.arange(skipped.numel(), device=skipped.device)
    grid = RowOrigin(first_sequence, skipped.shape[1], flat)
    unit.suite.nonfinite.skip("downstream_positions", skipped.flatten(), grid)


def _finite_downstream(
    clean_ce: torch.Tensor, sae: tuple, ablated: tuple, positions: torch.Tensor,
    kept: torch.Tensor | None,
) -> torch.Tensor | None:  # fmt: skip
    """`[B, T]` mask of the positions fit for CE/KL sums, or None when all are: clean and
    patched scores finite, and the SAE kept the position's row (a row left out of the sparse
    metrics is left out here too)."""
    from saedoctor.metrics.downstream import finite_positions

    ok = finite_positions(clean_ce, sae, ablated)
    if kept is None:
        return ok
    if ok is None:
        ok = torch.ones_like(sae[1], dtype=torch.bool)
    ok.view(-1)[positions[~kept]] = False
    return ok


def check_against_model(units: list[SAEUnderTest], model: str, n_layers: int, d_model: int) -> None:
    for unit in units:
        cfg = unit.sae.cfg
        if cfg.d_in != d_model:
            raise InputError(
                f"{unit.path}: SAE d_in={cfg.d_in} but model {model} has width {d_model}"
            )
        if unit.sae.site.layer >= n_layers:
            raise InputError(
                f"{unit.path}: layer {unit.sae.site.layer} out of range: model {model} has "
                f"{n_layers} blocks (0..{n_layers - 1})"
            )


def run_on_model(opts: DiagnoseOptions, units: list[SAEUnderTest],
                 loaded_model: Any = None) -> dict[str, Any]:  # fmt: skip
    from saedoctor.activations.model import follow_sites, load_model

    loaded = loaded_model or load_model(opts.model, device=opts.device, dtype=opts.dtype,
                                        device_map=opts.device_map, quantize=opts.quantize)
    if loaded_model is not None or opts.device_map is not None or opts.quantize is not None:
        follow_sites(loaded, units)  # a model placed by the caller: SAEs go where it is
    check_against_model(units, loaded.name, loaded.n_layers, loaded.d_model)
    state = main_pass_state(opts, loaded, units)
    passes = ModelPass(loaded, opts, units, state)
    with state.signals():
        if opts.downstream:
            info = passes.run_downstream(opts.corpus, opts.tokens,
                                         "diagnose (with downstream loss)")  # fmt: skip
        else:
            info = passes.run(opts.corpus, opts.tokens, suite_sink, "diagnose")
    info = distributed.gather_main_pass(units, info, state)  # under torchrun: rank 0 goes on
    passes.state = None  # the secondary passes rerun from scratch on resume
    _require_tokens(info, opts.corpus)
    extras = secondary_passes(passes, units, state, info)
    model_info = {"name": loaded.name, "n_layers": loaded.n_layers, "d_model": loaded.d_model}
    return {"model": model_info, **info, **extras, "state_file": state.path}


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


def main_pass_state(opts: DiagnoseOptions, loaded: Any, units: list[SAEUnderTest]) -> Any:
    """The saver / resumer of the main pass; its file is `opts.state_file` or in the cache."""
    from saedoctor.diagnose_state import MainPassState, cached_state_path, identity

    tokenizer = loaded.tokenizer
    model = {"name": loaded.name, "n_layers": loaded.n_layers, "d_model": loaded.d_model,
             "vocab": len(tokenizer), "tokenizer": type(tokenizer).__name__}  # fmt: skip
    ident = identity(opts, model, units)
    path = Path(opts.state_file) if opts.state_file else cached_state_path(ident)
    return MainPassState(path, ident, units, opts.tokens, opts.checkpoint_minutes)


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

    def sink(unit, x, x_hat, codes, seq_ids) -> None:
        extremes[unit.name].update(codes)

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
    shadows = [SAEUnderTest(u.name, u.path, u.sae, new_suite(u.sae, opts)) for u in units]
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
    from saedoctor.metrics.density_shift import density_shift

    # Absorption is a property of the decoder, not of the corpus: not recomputed here.
    a, b = main.suite.compute(), other.suite.compute()
    dead = main.suite.features.dead_threshold
    shift = density_shift(torch.tensor(a["density"]), torch.tensor(b["density"]), dead)
    metrics = {k: v for k, v in b.items() if k not in _BULKY}
    deltas = {
        k: v - a[k]
        for k, v in metrics.items()
        if isinstance(v, int | float) and isinstance(a.get(k), int | float)
    }
    return {"corpus": corpus, "tokens_counted": counted, "metrics": metrics, "deltas": deltas,
            **shift}  # fmt: skip


_BULKY = ("density", "density_histogram", "mean_activation_when_active", "absorption",
          "absorption_method", "absorption_features", "absorption_reason")  # fmt: skip


# -- cached activations --------------------------------------------------------------------
def run_on_activations(opts: DiagnoseOptions, units: list[SAEUnderTest]) -> dict[str, Any]:
    from saedoctor.activations.cached import DEFAULT_CONTEXT as CACHED_CONTEXT
    from saedoctor.activations.cached import iter_cached_batches, load_cached_activations

    acts = load_cached_activations(opts.activations)
    d_in = acts.shape[-1]
    for unit in units:
        if unit.sae.cfg.d_in != d_in:
            raise InputError(
                f"{unit.path}: SAE d_in={unit.sae.cfg.d_in} but {opts.activations} holds "
                f"activations of width {d_in}"
            )
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
    info = {"model": None, "tokens_processed": counted, "tokens_counted": counted}
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


# -- the report ----------------------------------------------------------------------------
NOT_MEASURED_WITHOUT_MODEL = "no language model: evaluated on cached activations"
NOT_MEASURED_OFF = "downstream loss not requested (--no-downstream) or undefined on this data"


def sae_entry(unit: SAEUnderTest, info: dict[str, Any]) -> dict[str, Any]:
    metrics = unit.suite.compute(W_dec=unit.sae.W_dec.detach())
    density = metrics.pop("density")
    histogram = metrics.pop("density_histogram")
    mean_activation = metrics.pop("mean_activation_when_active")
    metrics.update(unit.downstream.compute())
    first_letter = info.get("first_letter", {}).get(unit.name)
    if first_letter is not None and first_letter["first_letter_absorption"] is not None:
        metrics["first_letter_absorption"] = first_letter["first_letter_absorption"]
    nonfinite = unit.suite.nonfinite.compute()
    reason = NOT_MEASURED_WITHOUT_MODEL if info["model"] is None else NOT_MEASURED_OFF
    if nonfinite["downstream_positions_skipped"] and not unit.downstream.compute():
        reason = nonfinite_downstream_reason(nonfinite)
    not_measured = {k: reason for k in ("loss_recovered", "kl_score") if metrics.get(k) is None}
    if metrics["tokens_seen"] == 0:  # every row skipped as non-finite: nothing to measure
        keys = ("always_on_features", *unit.suite.measured_keys())
        not_measured |= dict.fromkeys(keys, nonfinite_rows_reason(nonfinite))
    for key in not_measured:
        metrics.pop(key, None)
    if first_letter is not None and "first_letter_absorption" not in metrics:
        not_measured["first_letter_absorption"] = first_letter.get("reason", "not measured")
    return {
        "name": unit.name,
        "path": unit.path,
        "config": config_entry(unit.sae),
        "site": site_entry(unit.sae),
        "metrics": metrics,
        "not_measured": not_measured,
        "nonfinite": nonfinite,
        "grading": None,
        "diagnoses": [],
        "prescriptions": [],
        "always_on_explanations": info.get("explanations", {}).get(unit.name, []),
        "corpus_comparison": info.get("comparisons", {}).get(unit.name),
        "first_letter_absorption": first_letter,
        "density_histogram": histogram,
        "feature_density": density,
        "feature_mean_activation": mean_activation,
    }


def nonfinite_rows_reason(nonfinite: dict[str, Any]) -> str:
    acts, outs = nonfinite["activation_rows_skipped"], nonfinite["sae_output_rows_skipped"]
    if not outs:
        return f"every activation row was non-finite (NaN/inf; fp16 overflow?): {acts} skipped"
    if not acts:
        return f"the SAE's output was non-finite on every row (fp16 overflow?): {outs} skipped"
    return (f"no finite row left: {acts} activation rows non-finite, {outs} more with a "
            "non-finite SAE output")  # fmt: skip


def nonfinite_downstream_reason(nonfinite: dict[str, Any]) -> str:
    n = nonfinite["downstream_positions_skipped"]
    return f"every position had non-finite activations or logits (NaN/inf): {n} skipped"


def config_entry(sae: SAE) -> dict[str, Any]:
    cfg = sae.cfg
    return {
        "architecture": cfg.architecture,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "k": cfg.k,
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "dtype": cfg.dtype,
        "model_name": cfg.model_name,
        "metadata": _jsonable(cfg.metadata),
    }


def site_entry(sae: SAE) -> dict[str, Any] | None:
    site = sae.site
    if site is None:
        return None
    return {"layer": site.layer, "kind": site.kind, "hook_name": site.hook_name,
            "description": site.describe()}  # fmt: skip


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def run_metadata(opts: DiagnoseOptions, info: dict[str, Any], seconds: float) -> dict:
    import platform

    import numpy
    import safetensors
    import transformers

    from saedoctor import __version__

    options = asdict(opts)
    # How the run was carried out, not what it measured: a resumed report equals a fresh one.
    for key in ("quiet", "resume", "state_file", "checkpoint_minutes", "keep_state"):
        options.pop(key)
    keep = ("model", "tokens_processed", "tokens_counted", "sequences")
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": {
            "saedoctor": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "numpy": numpy.__version__,
            "safetensors": safetensors.__version__,
            "python": platform.python_version(),
        },
        "torch_threads": torch.get_num_threads(),
        "options": options,
        "corpus": None if opts.activations else opts.corpus,
        "compare_corpus": opts.compare_corpus,
        "activations_file": opts.activations,
        "seed": opts.seed,
        "wall_time_s": round(seconds, 3),
        **{k: info[k] for k in keep if k in info},
    }


def diagnose(
    opts: DiagnoseOptions | None = None, *, loaded_model: Any = None, **overrides: Any
) -> dict[str, Any]:
    """Run the diagnosis and return the graded report document (SPEC §5).

    `loaded_model`: an already-built `saedoctor.activations.model.LoadedModel` (e.g. shared
    with `train`, or built from a config in a benchmark) instead of loading `opts.model`;
    `opts.model`, `dtype`, `device_map` and `quantize` then play no part in loading, token ids
    go to `opts.device`, and each SAE moves to its site's device."""
    from saedoctor.health import apply_health, load_policy

    opts = opts or DiagnoseOptions(**overrides)
    opts.validate()
    distributed.setup_diagnose(opts)
    policy = load_policy(opts.policy)  # a bad policy fails before minutes of streaming
    torch.manual_seed(opts.seed)
    if not opts.saes and opts.activations is None:
        opts.saes = [str(ensure_default_sae(opts))]
    start = time.perf_counter()
    units = load_saes(opts)
    if not units:
        raise InputError("--sae: expected at least one SAE path")
    if opts.activations is not None:
        info = run_on_activations(opts, units)
    else:
        info = run_on_model(opts, units, loaded_model)
    document = {
        "schema": "saedoctor.report/1",
        "run": run_metadata(opts, info, 0.0),
        "saes": [sae_entry(u, info) for u in units],
    }
    apply_health(document, policy)
    document["run"]["wall_time_s"] = round(time.perf_counter() - start, 3)
    if not opts.keep_state:
        _discard_state(info.get("state_file"))
    return document


def diagnose_and_write(opts: DiagnoseOptions, out: str | Path) -> dict[str, Any]:
    """`diagnose`, then the report JSON to `out`. The main pass's state is saved beside it,
    `<out>.partial.safetensors`, and deleted only once the report is written: an interrupt,
    or a failed write, leaves it for `resume=True`."""
    from saedoctor.diagnose_state import state_path_for
    from saedoctor.report.document import write_report

    opts.state_file = opts.state_file or str(state_path_for(out))
    opts.keep_state = True
    document = diagnose(opts)
    write_report(document, out)
    _discard_state(opts.state_file)
    return document


def _discard_state(path: str | Path | None) -> None:
    from saedoctor.diagnose_state import discard

    discard(path)


def ensure_default_sae(opts: DiagnoseOptions) -> Path:
    """The cached default SAE; trained on `python-docs@train` the first time."""
    from saedoctor.train.default import train_default_sae

    path = defaults.default_sae_dir()
    if not (path / "cfg.json").exists():
        train_default_sae(path, device=opts.device, quiet=opts.quiet)
    return path
