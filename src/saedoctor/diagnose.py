"""The main job: stream activations once, feed every SAE, measure every health metric."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from saedoctor import defaults
from saedoctor.errors import InputError
from saedoctor.metrics.suite import MetricSuite
from saedoctor.progress import token_progress
from saedoctor.sae.model import SAE
from saedoctor.sae.site import SITE_KINDS


@dataclass
class DiagnoseOptions:
    """Everything `saedoctor diagnose` takes; defaults are the embedded default run."""

    model: str | None = None
    saes: list[str] = field(default_factory=list)
    layer: int | None = None
    site: str | None = None
    corpus: str = defaults.DEFAULT_EVAL_CORPUS
    text_field: str = "text"
    tokens: int = defaults.DEFAULT_EVAL_TOKENS
    context: int = defaults.DEFAULT_CONTEXT
    batch_size: int = defaults.DEFAULT_BATCH_SIZE
    device: str = "cpu"
    dtype: str = "float32"
    activations: str | None = None
    include_special: bool = False
    always_on_threshold: float = 0.80
    seed: int = 0
    quiet: bool = False

    def validate(self) -> None:
        for name in ("tokens", "context", "batch_size"):
            if getattr(self, name) <= 0:
                raise InputError(f"--{name.replace('_', '-')}: expected a positive integer")
        if self.site is not None and self.site not in SITE_KINDS:
            raise InputError(f"--site {self.site!r}: expected one of {', '.join(SITE_KINDS)}")
        if self.dtype not in ("float32", "bfloat16", "float16", "float64"):
            raise InputError(
                f"--dtype {self.dtype!r}: expected float32, bfloat16, float16 or float64"
            )
        if not 0 < self.always_on_threshold <= 1:
            raise InputError("--always-on-threshold: expected a fraction in (0, 1]")


@dataclass
class SAEUnderTest:
    name: str
    path: str
    sae: SAE
    suite: MetricSuite


def load_saes(opts: DiagnoseOptions) -> list[SAEUnderTest]:
    from saedoctor.sae.loaders import load_sae

    units = []
    for path in opts.saes:
        sae = load_sae(path, layer=opts.layer, site=opts.site, device=opts.device)
        if sae.site is None and opts.activations is None:
            raise InputError(f"{path}: the SAE's config names no layer; pass --layer (and --site)")
        units.append(SAEUnderTest(_unit_name(sae, path), str(path), sae, _suite_for(sae, opts)))
    return units


def _unit_name(sae: SAE, path: str) -> str:
    site = sae.site.hook_name if sae.site else "unsited"
    return f"{Path(path).name}:{site}"


def _suite_for(sae: SAE, opts: DiagnoseOptions) -> MetricSuite:
    return MetricSuite(sae.cfg.d_in, sae.cfg.d_sae, always_on_threshold=opts.always_on_threshold)


@torch.inference_mode()
def feed(unit: SAEUnderTest, x: torch.Tensor, seq_ids: torch.Tensor) -> None:
    x_hat, codes = unit.sae(x)
    unit.suite.update(x, x_hat, codes, seq_ids)


def run_on_model(opts: DiagnoseOptions, units: list[SAEUnderTest]) -> dict[str, Any]:
    from saedoctor.activations.batches import token_batches
    from saedoctor.activations.corpus import iter_documents
    from saedoctor.activations.model import load_model
    from saedoctor.activations.stream import site_batches

    loaded = load_model(opts.model, device=opts.device, dtype=opts.dtype)
    check_against_model(units, loaded.name, loaded.n_layers, loaded.d_model)
    documents = iter_documents(opts.corpus, text_field=opts.text_field)
    batches = token_batches(
        loaded.tokenizer,
        documents,
        context=opts.context,
        batch_size=opts.batch_size,
        max_tokens=opts.tokens,
        include_special=opts.include_special,
        name=opts.corpus,
    )
    sites = {u.sae.site for u in units}
    totals = {"tokens_processed": 0, "tokens_counted": 0, "sequences": 0}
    with token_progress(opts.quiet) as progress:
        task = progress.add_task("diagnose", total=opts.tokens)
        for batch in _counting(batches, totals):
            progress.update(task, advance=batch.input_ids.numel())
            for sb in site_batches(loaded.model, sites, [batch], opts.device):
                totals["tokens_counted"] += sb.seq_ids.numel()
                for unit in units:
                    feed(unit, sb.acts[unit.sae.site], sb.seq_ids.to(opts.device))
    model_info = {"name": loaded.name, "n_layers": loaded.n_layers, "d_model": loaded.d_model}
    return {"model": model_info, **totals}


def _counting(batches: Iterator, totals: dict[str, int]) -> Iterator:
    for batch in batches:
        totals["tokens_processed"] += batch.input_ids.numel()
        totals["sequences"] += batch.input_ids.shape[0]
        yield batch


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
        n_tokens = acts.numel() // d_in
        task = progress.add_task("diagnose", total=n_tokens)
        for x, seq_ids in iter_cached_batches(acts, opts.batch_size * opts.context):
            counted += x.shape[0]
            progress.update(task, advance=x.shape[0])
            for unit in units:
                feed(unit, x.to(opts.device), seq_ids.to(opts.device))
    return {"model": None, "tokens_processed": counted, "tokens_counted": counted}


NOT_MEASURED_WITHOUT_MODEL = "no language model: evaluated on cached activations"
NOT_MEASURED_YET = "downstream loss metrics are not measured by this version"


def sae_entry(unit: SAEUnderTest, has_model: bool) -> dict[str, Any]:
    metrics = unit.suite.compute(W_dec=unit.sae.W_dec.detach())
    density = metrics.pop("density")
    histogram = metrics.pop("density_histogram")
    reason = NOT_MEASURED_YET if has_model else NOT_MEASURED_WITHOUT_MODEL
    cfg = unit.sae.cfg
    site = unit.sae.site
    return {
        "name": unit.name,
        "path": unit.path,
        "config": {
            "architecture": cfg.architecture,
            "d_in": cfg.d_in,
            "d_sae": cfg.d_sae,
            "k": cfg.k,
            "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
            "dtype": cfg.dtype,
            "model_name": cfg.model_name,
            "metadata": _jsonable(cfg.metadata),
        },
        "site": None
        if site is None
        else {
            "layer": site.layer,
            "kind": site.kind,
            "hook_name": site.hook_name,
            "description": site.describe(),
        },
        "metrics": metrics,
        "not_measured": {k: reason for k in ("loss_recovered", "kl_score")},
        "grading": None,
        "diagnoses": [],
        "prescriptions": [],
        "always_on_explanations": [],
        "density_histogram": histogram,
        "feature_density": density,
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def run_metadata(opts: DiagnoseOptions, stream_info: dict[str, Any], seconds: float) -> dict:
    import platform

    import transformers

    from saedoctor import __version__

    opt = asdict(opts)
    opt.pop("quiet")
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": {
            "saedoctor": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "options": opt,
        "corpus": None if opts.activations else opts.corpus,
        "activations_file": opts.activations,
        "seed": opts.seed,
        "wall_time_s": round(seconds, 3),
        **stream_info,
    }


def diagnose(opts: DiagnoseOptions | None = None, **overrides: Any) -> dict[str, Any]:
    """Run the diagnosis and return the report document (SPEC §5)."""
    opts = opts or DiagnoseOptions(**overrides)
    opts.validate()
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
    if info["tokens_counted"] == 0:
        raise InputError(f"corpus {opts.corpus!r}: no counted tokens (all were special tokens?)")
    entries = [sae_entry(u, info["model"] is not None) for u in units]
    return {
        "schema": "saedoctor.report/1",
        "run": run_metadata(opts, info, time.perf_counter() - start),
        "saes": entries,
    }


def ensure_default_sae(opts: DiagnoseOptions) -> Path:
    """The cached default SAE; trained on `python-docs@train` the first time."""
    from saedoctor.train.default import train_default_sae

    path = defaults.default_sae_dir()
    if not (path / "cfg.json").exists():
        train_default_sae(path, device=opts.device, quiet=opts.quiet)
    return path
