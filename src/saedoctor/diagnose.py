"""The main job: stream activations once, feed every SAE, measure every health metric.

Passes: the main one over `corpus` (every metric); a short one over the first batches of the
same corpus when some SAE has always-on features (their strongest / weakest tokens); and one
over `compare_corpus` when asked (training-data mismatch). Each pass runs one forward per
batch for all SAEs, stopping at the deepest block any of them needs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from saedoctor import defaults
from saedoctor.errors import InputError
from saedoctor.metrics.downstream import Downstream
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
    quiet: bool = False

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
    """One streaming pass of a corpus through the model, feeding every SAE."""

    loaded: Any
    opts: DiagnoseOptions
    units: list[SAEUnderTest]

    def run(self, corpus: str, tokens: int, sink: Sink, label: str, keep=None) -> dict[str, int]:
        from saedoctor.activations.stream import site_batches

        totals: dict[str, int] = {}
        sites = {u.sae.site for u in self.units}
        for batch in self._tracked(corpus, tokens, label, totals):
            for sb in site_batches(self.loaded.model, sites, [batch], self.opts.device):
                if keep is not None:
                    keep(sb)
                for unit in self.units:
                    feed(unit, sb.acts[unit.sae.site], sb.seq_ids, sink)
        return totals

    def run_downstream(self, corpus: str, tokens: int, label: str) -> dict[str, int]:
        """The main pass with loss recovered / KL: one clean forward to the logits per batch,
        one patched tail per SAE and one zero-ablated tail per site."""
        from saedoctor.activations.splice import Splicer

        totals: dict[str, int] = {}
        splicer = Splicer(self.loaded.model, {u.sae.site for u in self.units})
        for batch in self._tracked(corpus, tokens, label, totals):
            if batch.counted.any():
                downstream_batch(splicer, self.units, batch, self.opts.device)
        return totals

    def _tracked(self, corpus: str, tokens: int, label: str, totals: dict[str, int]) -> Iterator:
        """Token batches with a progress bar, counting into `totals` as they go."""
        totals.update(tokens_processed=0, tokens_counted=0, sequences=0)
        with token_progress(self.opts.quiet) as progress:
            task = progress.add_task(label, total=tokens)
            for batch in self._batches(corpus, tokens):
                totals["tokens_processed"] += batch.input_ids.numel()
                totals["tokens_counted"] += int(batch.counted.sum())
                totals["sequences"] += batch.input_ids.shape[0]
                progress.update(task, advance=batch.input_ids.numel())
                yield batch

    def _batches(self, corpus: str, tokens: int) -> Iterator:
        from saedoctor.activations.batches import token_batches
        from saedoctor.activations.corpus import iter_documents

        return token_batches(
            self.loaded.tokenizer,
            iter_documents(corpus, text_field=self.opts.text_field),
            context=self.opts.context,
            batch_size=self.opts.batch_size,
            max_tokens=tokens,
            include_special=self.opts.include_special,
            name=corpus,
        )


@torch.inference_mode()
def feed(unit: SAEUnderTest, x: torch.Tensor, seq_ids: torch.Tensor, sink: Sink) -> None:
    x_hat, codes = unit.sae(x)
    sink(unit, x, x_hat, codes, seq_ids.to(x.device))


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

    ablated: dict[Any, tuple] = {}
    for unit in units:
        site = unit.sae.site
        site_acts = acts[site]
        flat = site_acts.reshape(-1, site_acts.shape[-1])
        x = flat[positions]
        x_hat, codes = unit.sae(x)
        unit.suite.update(x, x_hat, codes, seq_ids)
        spliced = flat.clone()
        spliced[positions] = x_hat.to(spliced.dtype)
        sae_scores = clean.score(splicer.patched(site, spliced.view_as(site_acts)))
        if site not in ablated:  # zero-ablation depends on the site only: once per site
            ablated[site] = clean.score(splicer.zero_ablated(site, counted))
        unit.downstream.add_clean(clean.ce, ce_mask)
        for which, (ce, kl) in (("sae", sae_scores), ("ablated", ablated[site])):
            unit.downstream.add_patched(which, ce, kl, ce_mask, kl_mask)


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


def run_on_model(opts: DiagnoseOptions, units: list[SAEUnderTest]) -> dict[str, Any]:
    from saedoctor.activations.model import load_model

    loaded = load_model(opts.model, device=opts.device, dtype=opts.dtype)
    check_against_model(units, loaded.name, loaded.n_layers, loaded.d_model)
    passes = ModelPass(loaded, opts, units)
    if opts.downstream:
        info = passes.run_downstream(opts.corpus, opts.tokens, "diagnose (with downstream loss)")
    else:
        info = passes.run(opts.corpus, opts.tokens, suite_sink, "diagnose")
    _require_tokens(info, opts.corpus)
    extras: dict[str, Any] = {"explanations": explain_on_model(passes, units)}
    if opts.first_letter_absorption:
        extras["first_letter"] = first_letter_on_model(loaded, units, opts)
    if opts.compare_corpus:
        extras["comparisons"] = compare_on_model(passes, units)
    model_info = {"name": loaded.name, "n_layers": loaded.n_layers, "d_model": loaded.d_model}
    return {"model": model_info, **info, **extras}


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
    with token_progress(opts.quiet) as progress:
        task = progress.add_task("diagnose", total=acts.numel() // d_in)
        for x, seq_ids in iter_cached_batches(acts, opts.batch_size * opts.context):
            counted += x.shape[0]
            progress.update(task, advance=x.shape[0])
            for unit in units:
                feed(unit, x.to(opts.device), seq_ids, suite_sink)
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
    reason = NOT_MEASURED_WITHOUT_MODEL if info["model"] is None else NOT_MEASURED_OFF
    not_measured = {k: reason for k in ("loss_recovered", "kl_score") if metrics.get(k) is None}
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

    import transformers

    from saedoctor import __version__

    options = asdict(opts)
    options.pop("quiet")
    keep = ("model", "tokens_processed", "tokens_counted", "sequences")
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": {
            "saedoctor": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "options": options,
        "corpus": None if opts.activations else opts.corpus,
        "compare_corpus": opts.compare_corpus,
        "activations_file": opts.activations,
        "seed": opts.seed,
        "wall_time_s": round(seconds, 3),
        **{k: info[k] for k in keep if k in info},
    }


def diagnose(opts: DiagnoseOptions | None = None, **overrides: Any) -> dict[str, Any]:
    """Run the diagnosis and return the graded report document (SPEC §5)."""
    from saedoctor.health import apply_health, load_policy

    opts = opts or DiagnoseOptions(**overrides)
    opts.validate()
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
        info = run_on_model(opts, units)
    document = {
        "schema": "saedoctor.report/1",
        "run": run_metadata(opts, info, 0.0),
        "saes": [sae_entry(u, info) for u in units],
    }
    apply_health(document, policy)
    document["run"]["wall_time_s"] = round(time.perf_counter() - start, 3)
    return document


def ensure_default_sae(opts: DiagnoseOptions) -> Path:
    """The cached default SAE; trained on `python-docs@train` the first time."""
    from saedoctor.train.default import train_default_sae

    path = defaults.default_sae_dir()
    if not (path / "cfg.json").exists():
        train_default_sae(path, device=opts.device, quiet=opts.quiet)
    return path
