"""Training throughput, saedoctor vs EleutherAI sparsify and SAELens: same model, layer, width,
k, batch, tokens, fp32; and where saedoctor's SAE step time goes.

    .venv/bin/python benchmarks/train_throughput.py [--layer 10] [--tokens 16384]
        [--repeats 5] [--warmup 1] [--threads 2] [--model default] [--skip-e2e]
        [--skip-sae-only] [--skip-profile] [--quick] [--out DIR]

Needs the `peers` extra (`pip install -e '.[peers]'`: sae-lens, eai-sparsify); a peer that does
not import stops the run with one line saying which and why.

End to end (text → tokens → LM forward → TopK SAE training, the way each tool is used):
- saedoctor: `saedoctor.train.train` (health monitor on, checkpoints off, SAE saved);
- sparsify: its `Trainer` (`Trainer(cfg, dataset, model).fit()`, what `python -m sparsify`
  runs) on the same HF model's base `LlamaModel` (what its CLI loads for the default `fvu`
  loss), hooking block `--layer`; its dataset is the same packed token sequences as a tokenized
  `datasets.Dataset` (its CLI's "already tokenized" path: shuffled, `with_format("torch")`),
  special tokens excluded with its `exclude_tokens`, batches of 8 sequences of 128 tokens;
  everything else its defaults (signum optimizer under schedule-free, its learning rate, no
  AuxK, decoder rows unit-norm, a final save to disk). Differences it brings along: it runs
  the whole model forward (all 30 blocks) where the other two stop after the hooked block, and
  it trains on each batch of 8 sequences as it comes (no token shuffling buffer);
- SAELens: `LanguageModelSAETrainingRunner` with the same HF model wrapped in its
  `HookedProxyLM` (which, like saedoctor, stops the forward after the hooked block), the same
  packed token sequences (a tokenized `datasets.Dataset`), special tokens excluded like
  saedoctor, the same buffer size (32 768 tokens), batch (1 024 tokens), k and width.
Each side counts the tokens it trained on (sparsify: the non-special tokens of its batches).

SAE only: the three train on the same in-memory activations (no LM), so the SAE step is
compared: saedoctor `train_on_activations`; SAELens `SAETrainer.fit` over batches of 1 024
rows; sparsify its `Trainer.fit` over a stand-in "model" whose one layer returns the stored
activations of the token positions it is given (batches of 8 x 128 positions, a fixed
permutation), so its real training step runs (b_dec at the first batch's mean, decoder
normalisation, forward, backward, gradient projection, optimizer, dead-latent counts); its
final checkpoint write is skipped there (the other two save nothing in this mode).

The tools run alternately (A B C A B C ...) in one process after `--warmup` unrecorded rounds,
so background load hits all alike; each side's median of `--repeats` runs is reported with min
and max (tokens trained per second of wall time, model loading excluded, everything else
included), and saedoctor's ratio to each peer is taken round by round. sparsify's `fit` sets
`torch.set_float32_matmul_precision("high")`, which the script puts back after each of its runs
(on this CPU it does not change fp32 matmuls: no TF32/AMX; checked in the run).

Profile (`--skip-profile` to leave out): one SAE-only saedoctor run under torch.profiler, its
CPU time split into encoder matmul, top-k, sparse decode, backward (encoder / decoder / rest),
optimizer, monitor and bookkeeping; the machine's fp32 matmul rate measured at the encoder's
shape in the same run; the FLOPs per token of encoder matmul + sparse decode + their backward;
and achieved tokens/s as a fraction of that arithmetic limit. Writes
`<out>/train_throughput.json`. The machine may be shared: compare the ratios, not the
absolute numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

import _results

NAME = "train_throughput"
EXPANSION, K, CONTEXT, BATCH_SEQS = 8, 32, 128, 8
BATCH_TOKENS = BATCH_SEQS * CONTEXT
BUFFER_TOKENS = 32_768
QUICK_TOKENS = 4096
SPARSIFY_SHUFFLE_SEED = 42  # its CLI's default --shuffle_seed
SIDES = ("saedoctor", "sparsify", "SAELens")
PEERS = {"sparsify": "sparsify", "SAELens": "saelens"}  # side -> result key
TARGETS = {"sae_step": 1.5, "e2e": 1.2}  # saedoctor / the faster peer, median of paired ratios
PEER_PACKAGES = ("eai-sparsify", "schedulefree", "sae-lens", "datasets")


def check_peers() -> dict[str, str]:
    """The peers' versions; a peer that does not import ends the run with one line."""
    from importlib.metadata import PackageNotFoundError, version

    for module, package in (("sparsify", "eai-sparsify"), ("sae_lens", "sae-lens")):
        try:
            with _quiet():  # sparsify prints which sparse decoder it uses on import
                __import__(module)
        except Exception as e:  # noqa: BLE001 - any import failure is a bad install
            raise SystemExit(f"train_throughput: peer {package} does not import "
                             f"({type(e).__name__}: {e}); pip install -e '.[peers]'") from None
    out = {}
    for package in PEER_PACKAGES:
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """A peer's prints and progress bars out of the benchmark's output."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


@contextlib.contextmanager
def _matmul_precision_kept() -> Iterator[None]:
    before = torch.get_float32_matmul_precision()
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def sequences(loaded: Any, corpus: str, tokens: int) -> list[list[int]]:
    """Packed sequences exactly as saedoctor reads them (BOS + documents joined by EOS)."""
    from saedoctor.activations.batches import token_batches
    from saedoctor.activations.corpus import iter_documents

    out: list[list[int]] = []
    counted = 0
    for batch in token_batches(loaded.tokenizer, iter_documents(corpus), context=CONTEXT,
                               batch_size=BATCH_SEQS, max_tokens=None, name=corpus):  # fmt: skip
        out.extend(batch.input_ids.tolist())
        counted += int(batch.counted.sum())
        # Plenty (SAELens excludes the same special tokens), and at least one buffer's worth.
        if counted >= max(tokens * 2, BUFFER_TOKENS):
            break
    return out


# -- end to end -------------------------------------------------------------------------------
def run_saedoctor(loaded: Any, layer: int, tokens: int, corpus: str) -> float:
    from saedoctor.train.config import TrainConfig
    from saedoctor.train.trainer import train

    cfg = TrainConfig(
        model="default",
        layers=[layer],
        dataset=corpus,
        training_tokens=tokens,
        expansion_factor=EXPANSION,
        top_k=K,
        batch_size=BATCH_SEQS,
        context=CONTEXT,
        shuffle_tokens=BUFFER_TOKENS,
        checkpoint_every=0,
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = train(cfg, Path(tmp) / "run", quiet=True, loaded_model=loaded)
        wall = time.perf_counter() - start
    return result.tokens / wall


def run_sparsify(loaded: Any, layer: int, tokens: int, corpus: str) -> float:
    from datasets import Dataset
    from sparsify import SaeConfig, TrainConfig, Trainer

    n_seqs = -(-tokens // BATCH_TOKENS) * BATCH_SEQS
    special = sorted(set(loaded.tokenizer.all_special_ids))
    with tempfile.TemporaryDirectory() as tmp, _quiet(), _matmul_precision_kept():
        start = time.perf_counter()  # from text, as saedoctor: tokenising is timed too
        dataset = Dataset.from_dict({"input_ids": sequences(loaded, corpus, tokens)})
        dataset = dataset.shuffle(SPARSIFY_SHUFFLE_SEED).with_format("torch")
        dataset = dataset.select(range(n_seqs))
        cfg = TrainConfig(SaeConfig(expansion_factor=EXPANSION, k=K), batch_size=BATCH_SEQS,
                          layers=[layer], exclude_tokens=special, log_to_wandb=False,
                          save_dir=tmp, run_name="run")  # fmt: skip
        # AutoModel, as its CLI loads for the fvu loss: the causal LM's base model.
        Trainer(cfg, dataset, loaded.model.model).fit()
        wall = time.perf_counter() - start
        ids = dataset[:]["input_ids"]
    trained = int(torch.isin(ids, torch.tensor(special), invert=True).sum())
    return trained / wall


def run_saelens(loaded: Any, layer: int, tokens: int, corpus: str) -> float:
    from datasets import Dataset
    from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner
    from sae_lens.config import LoggingConfig
    from sae_lens.load_model import HookedProxyLM
    from sae_lens.saes.topk_sae import TopKTrainingSAEConfig

    hook = f"model.layers.{layer}"
    d = loaded.d_model
    with tempfile.TemporaryDirectory() as tmp:
        cfg = LanguageModelSAERunnerConfig(
            sae=TopKTrainingSAEConfig(d_in=d, d_sae=d * EXPANSION, k=K,
                                      normalize_activations="none"),  # fmt: skip
            model_name=loaded.name, model_class_name="AutoModelForCausalLM", hook_name=hook,
            dataset_path="", is_dataset_tokenized=True, streaming=False, context_size=CONTEXT,
            prepend_bos=False, exclude_special_tokens=True, training_tokens=tokens,
            train_batch_size_tokens=BATCH_TOKENS, store_batch_size_prompts=BATCH_SEQS,
            n_batches_in_buffer=BUFFER_TOKENS // BATCH_TOKENS, device="cpu",
            lr=2e-4 / (d * EXPANSION / 2**14) ** 0.5, n_checkpoints=0,
            save_final_checkpoint=False, checkpoint_path=str(Path(tmp) / "ckpt"),
            output_path=str(Path(tmp) / "out"), n_eval_batches=0,
            logger=LoggingConfig(log_to_wandb=False),
        )  # fmt: skip
        proxy = HookedProxyLM(loaded.model, loaded.tokenizer, hook_names=[hook])
        with _quiet():
            start = time.perf_counter()  # from text, as saedoctor: tokenising is timed too
            dataset = Dataset.from_dict({"tokens": sequences(loaded, corpus, tokens)})
            runner = LanguageModelSAETrainingRunner(cfg, override_dataset=dataset,
                                                    override_model=proxy)  # fmt: skip
            runner.run()
            wall = time.perf_counter() - start
    return tokens / wall


# -- SAE only ---------------------------------------------------------------------------------
class _StoredLayer(torch.nn.Module):
    """sparsify's hooked module: returns the stored activations of the positions given."""

    def __init__(self, acts: torch.Tensor) -> None:
        super().__init__()
        self.acts = acts

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        return self.acts[positions]


class _StoredModel(torch.nn.Module):
    """The least of a `PreTrainedModel` that sparsify's Trainer reads: `config`, `base_model`,
    `device`, `dummy_inputs`, and a list of layers (one) to hook."""

    def __init__(self, acts: torch.Tensor) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList([_StoredLayer(acts)])
        self.config = SimpleNamespace(num_hidden_layers=1)
        self.dummy_inputs = {"input_ids": torch.zeros(1, 1, dtype=torch.long)}

    @property
    def base_model(self) -> torch.nn.Module:
        return self

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.layers[0](input_ids)


class _Positions(torch.utils.data.Dataset):
    def __init__(self, rows: torch.Tensor) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return self.rows.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.rows[i]}


def sae_only(d: int, tokens: int, acts: torch.Tensor) -> dict[str, Callable[[], float]]:
    """One closure per side, each training a TopK SAE on the same in-memory activations."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    lr = 2e-4 / (d * EXPANSION / 2**14) ** 0.5
    steps = tokens // BATCH_TOKENS
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(steps * BATCH_TOKENS, generator=gen)

    def ours() -> float:
        from saedoctor.train.trainer import train_on_activations

        start = time.perf_counter()
        result = train_on_activations(ours_config(tokens), acts[:tokens])
        return result.tokens / (time.perf_counter() - start)

    def sparsify() -> float:
        from sparsify import SaeConfig, TrainConfig, Trainer

        model = _StoredModel(acts)
        data = _Positions(order.view(-1, CONTEXT))
        with tempfile.TemporaryDirectory() as tmp, _quiet(), _matmul_precision_kept():
            cfg = TrainConfig(SaeConfig(expansion_factor=EXPANSION, k=K),
                              batch_size=BATCH_SEQS, layers=[0], log_to_wandb=False,
                              save_dir=tmp)  # fmt: skip
            start = time.perf_counter()
            trainer = Trainer(cfg, data, model)
            trainer.save = lambda: None  # no checkpoint write: the others save nothing here
            trainer.fit()
            wall = time.perf_counter() - start
        return steps * BATCH_TOKENS / wall

    def saelens() -> float:
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=d * EXPANSION, k=K,
                                                    normalize_activations="none"))  # fmt: skip
        cfg = SAETrainerConfig(
            n_checkpoints=0, checkpoint_path=None, save_final_checkpoint=False,
            total_training_samples=steps * BATCH_TOKENS, device="cpu", autocast=False, lr=lr,
            lr_end=lr, lr_scheduler_name="constant", lr_warm_up_steps=0, adam_beta1=0.9,
            adam_beta2=0.999, lr_decay_steps=0, n_restart_cycles=1,
            train_batch_size_samples=BATCH_TOKENS, dead_feature_window=1000,
            feature_sampling_window=2000, logger=LoggingConfig(log_to_wandb=False),
        )  # fmt: skip
        provider = iter(acts[order[i * BATCH_TOKENS : (i + 1) * BATCH_TOKENS]]
                        for i in range(steps))  # fmt: skip
        with _quiet():
            start = time.perf_counter()
            SAETrainer(cfg, sae, provider).fit()
            wall = time.perf_counter() - start
        return steps * BATCH_TOKENS / wall

    return {"saedoctor": ours, "sparsify": sparsify, "SAELens": saelens}


def ours_config(tokens: int) -> Any:
    from saedoctor.train.config import TrainConfig

    return TrainConfig(layers=[0], training_tokens=tokens, expansion_factor=EXPANSION, top_k=K,
                       batch_size=BATCH_SEQS, context=CONTEXT, shuffle_tokens=BUFFER_TOKENS,
                       checkpoint_every=0)  # fmt: skip


# -- profile and arithmetic limit ----------------------------------------------------------
PARTS = ("encoder matmul", "top-k", "sparse decode", "encoder backward", "decoder backward",
         "other backward", "optimizer", "monitor", "bookkeeping", "other")  # fmt: skip
_LABELS = {"optimizer": "tp.optimizer", "monitor": "tp.monitor", "bookkeeping": "tp.bookkeeping"}


@contextlib.contextmanager
def _labelled() -> Iterator[None]:
    """Name the optimizer step, the monitor and the bookkeeping in the profile (the methods
    wrapped in `record_function` for the profiled run only)."""
    from saedoctor.train.monitor import HealthMonitor
    from saedoctor.train.sae_trainer import TrainableSAE

    targets = [(TrainableSAE, "optimizer_step", _LABELS["optimizer"]),
               (HealthMonitor, "update", _LABELS["monitor"]),
               (HealthMonitor, "report", _LABELS["monitor"]),
               (TrainableSAE, "_bookkeep", _LABELS["bookkeeping"])]  # fmt: skip
    saved = [(cls, name, getattr(cls, name)) for cls, name, _ in targets]

    def wrap(fn: Callable[..., Any], label: str) -> Callable[..., Any]:
        def inner(*args: Any, **kwargs: Any) -> Any:
            with torch.profiler.record_function(label):
                return fn(*args, **kwargs)

        return inner

    for (cls, name, label), (_, _, fn) in zip(targets, saved, strict=True):
        setattr(cls, name, wrap(fn, label))
    try:
        yield
    finally:
        for cls, name, fn in saved:
            setattr(cls, name, fn)


def _part(event: Any) -> str:
    """Which part of the step an op's own time belongs to, from its name and its callers."""
    chain = []
    node = event
    while node is not None:
        chain.append(node.name)
        node = node.cpu_parent
    for part, label in _LABELS.items():
        if label in chain:
            return part
    backward = [n for n in chain if n.startswith("autograd::engine::evaluate_function")]
    if backward or any(n.endswith("Backward") for n in chain):
        if any("TopKEncodeBackward" in n or "MmBackward" in n or "AddmmBackward" in n
               or "TopkBackward" in n for n in chain):  # fmt: skip
            return "encoder backward"
        if any("EmbeddingBagBackward" in n or "SparseDecodeBackward" in n for n in chain):
            return "decoder backward"
        return "other backward"
    name = event.name
    if name in ("aten::addmm", "aten::mm"):  # the forward's only matmul
        return "encoder matmul"
    if name == "aten::topk":
        return "top-k"
    if "embedding_bag" in name:
        return "sparse decode"
    return "other"


def profile_step(tokens: int, acts: torch.Tensor) -> dict[str, Any]:
    """One SAE-only saedoctor run under torch.profiler: each part's share of the op time."""
    from torch.profiler import ProfilerActivity, profile

    from saedoctor.train.trainer import train_on_activations

    with _labelled(), profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        result = train_on_activations(ours_config(tokens), acts[:tokens])
        wall = time.perf_counter() - start
    spent = dict.fromkeys(PARTS, 0.0)
    for event in prof.events():  # each op's own time (its callees are counted on their own)
        spent[_part(event)] += event.self_cpu_time_total / 1e6
    total = sum(spent.values())
    steps = result.tokens // BATCH_TOKENS
    return {
        "tokens": result.tokens, "steps": steps, "wall_s": round(wall, 4),
        "profiled_tokens_per_s": round(result.tokens / wall, 1),
        "op_time_s": round(total, 4),  # the rest of wall_s: Python between ops, profiler
        "ms_per_step": {p: round(spent[p] / steps * 1e3, 3) for p in PARTS},
        "share": {p: round(spent[p] / total, 4) for p in PARTS},
    }  # fmt: skip


def flops_per_token(d: int, d_sae: int, k: int) -> dict[str, int]:
    """FLOPs (2 per multiply-add) per token of the SAE step's arithmetic."""
    parts = {
        "encoder_matmul": 2 * d * d_sae,  # (x - b_dec) @ W_enc: every latent's pre-activation
        "sparse_decode": 2 * k * d,  # k rows of W_dec, weighted
        "encoder_backward_sparse": 2 * k * d,  # ∂W_enc: the k firing latents' columns
        "decoder_backward": 2 * 2 * k * d,  # ∂W_dec rows and ∂codes, k each
    }
    parts["total"] = sum(parts.values())
    # What a dense encoder backward (autograd's (x - b_dec)ᵀ @ ∂pre) would add.
    parts["total_with_dense_encoder_backward"] = parts["total"] + 2 * d * d_sae
    return parts


def matmul_gflops(d: int, d_sae: int, repeats: int) -> dict[str, Any]:
    """The machine's fp32 rate on the encoder's matmul shape, `[1024, d] @ [d, d_sae]`."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH_TOKENS, d, generator=gen)
    w = torch.randn(d, d_sae, generator=gen)
    b = torch.randn(d_sae, generator=gen)
    flops = 2 * BATCH_TOKENS * d * d_sae
    torch.addmm(b, x, w)
    rates = []
    for _ in range(repeats):
        n, start = 0, time.perf_counter()
        while n < 4 or time.perf_counter() - start < 0.5:
            torch.addmm(b, x, w)
            n += 1
        rates.append(flops * n / (time.perf_counter() - start) / 1e9)
    return {"shape": [BATCH_TOKENS, d, d_sae], "gflop_per_s": _results.timing(rates, digits=3)}


def arithmetic(d: int, d_sae: int, achieved: float, repeats: int) -> dict[str, Any]:
    flops = flops_per_token(d, d_sae, K)
    rate = matmul_gflops(d, d_sae, repeats)
    gflops = rate["gflop_per_s"]["median"]
    limit = gflops * 1e9 / flops["total"]
    return {
        "flops_per_token": flops,
        "matmul": rate,
        "limit_tokens_per_s": round(limit, 1),
        "achieved_tokens_per_s": round(achieved, 1),
        "fraction_of_limit": round(achieved / limit, 4),
        "achieved_gflop_per_s": round(achieved * flops["total"] / 1e9, 2),
    }


# -- reporting -----------------------------------------------------------------------------
def show_run(name: str, run: int, value: float) -> None:
    print(f"  run {run} {name}: {value:,.0f} tokens/s", flush=True)


def compare(title: str, runs: dict[str, list[float]], target: float,
            reason: str | None) -> dict[str, Any]:  # fmt: skip
    """Every side's throughput, saedoctor's paired ratio to each peer, and the target."""
    block: dict[str, Any] = {"saedoctor_tokens_per_s": _results.timing(runs["saedoctor"],
                                                                       allow_fewer=reason)}
    for side, key in PEERS.items():
        block[f"{key}_tokens_per_s"] = _results.timing(runs[side], allow_fewer=reason)
    for side, key in PEERS.items():
        block[f"ratio_vs_{key}"] = _results.timing(
            _results.paired_ratios(runs["saedoctor"], runs[side]), allow_fewer=reason)
    faster = max(PEERS, key=lambda s: statistics.median(runs[s]))
    ratio = block[f"ratio_vs_{PEERS[faster]}"]["median"]
    block["faster_peer"] = faster
    block["target_ratio_vs_faster_peer"] = target
    block["target_met"] = ratio >= target
    ours = block["saedoctor_tokens_per_s"]["median"]
    peers = ", ".join(f"{s} {block[f'{k}_tokens_per_s']['median']:,.0f}" for s, k in PEERS.items())
    ratios = ", ".join(f"{block[f'ratio_vs_{k}']['median']:.2f}x {s} "
                       f"({block[f'ratio_vs_{k}']['min']:.2f}-{block[f'ratio_vs_{k}']['max']:.2f})"
                       for s, k in PEERS.items())  # fmt: skip
    print(f"{title}: saedoctor {ours:,.0f} tokens/s, {peers}; {ratios}; target "
          f"{target}x the faster peer ({faster}): {'met' if block['target_met'] else 'MISSED'}")
    return block


def main() -> None:
    import logging

    import transformers

    started = time.time()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layer", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=16_384)
    ap.add_argument("--repeats", type=int, default=_results.MIN_RUNS)
    ap.add_argument("--warmup", type=int, default=1, help="unrecorded rounds first")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (0: torch's default)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--corpus", default="python-docs@train")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--skip-sae-only", action="store_true")
    ap.add_argument("--skip-profile", action="store_true")
    _results.add_arguments(ap)
    args = ap.parse_args()
    if args.quick:
        args.tokens, args.repeats, args.warmup = QUICK_TOKENS, _results.QUICK_RUNS, 0
    if args.threads:
        torch.set_num_threads(args.threads)
    peer_versions = check_peers()
    reason = _results.fewer_reason(args.repeats, args.quick)
    logging.getLogger("sae_lens").setLevel(logging.ERROR)
    transformers.logging.set_verbosity_error()
    from saedoctor.activations.model import load_model

    loaded = load_model(args.model)
    d = loaded.d_model
    print(f"model {loaded.name}, layer {args.layer}, d_sae {d * EXPANSION}, k {K}, "
          f"{args.tokens:,} tokens per run, {torch.get_num_threads()} threads, "
          f"{args.warmup} warm-up + {args.repeats} alternating runs per side")  # fmt: skip
    payload: dict[str, Any] = {"settings": {
        "model": loaded.name, "layer": args.layer, "d_in": d, "d_sae": d * EXPANSION, "k": K,
        "tokens_per_run": args.tokens, "batch_tokens": BATCH_TOKENS,
        "buffer_tokens": BUFFER_TOKENS, "context": CONTEXT, "corpus": args.corpus,
        "repeats": args.repeats, "warmup_rounds": args.warmup, "dtype": "float32",
        "torch_threads": torch.get_num_threads(), "order": list(SIDES),
        "peer_versions": peer_versions}}  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    acts = torch.randn(args.tokens, d, generator=gen) * 2 + torch.randn(d, generator=gen) * 4
    if not args.skip_sae_only:
        print("SAE only (same in-memory activations):")
        runs = _results.alternate(sae_only(d, args.tokens, acts), args.repeats,
                                  warmup=args.warmup, on_run=show_run)  # fmt: skip
        payload["sae_step"] = compare("SAE only", runs, TARGETS["sae_step"], reason)
    if not args.skip_e2e:
        print("end to end (text → LM forward → SAE):")
        e2e = {"saedoctor": run_saedoctor, "sparsify": run_sparsify, "SAELens": run_saelens}
        runs = _results.alternate(
            {side: (lambda fn=fn: fn(loaded, args.layer, args.tokens, args.corpus))
             for side, fn in e2e.items()},
            args.repeats, warmup=args.warmup, on_run=show_run)  # fmt: skip
        payload["e2e"] = compare("end to end", runs, TARGETS["e2e"], reason)
    if not args.skip_profile:
        print("profile (saedoctor, SAE only):")
        prof = profile_step(args.tokens, acts)
        achieved = (payload["sae_step"]["saedoctor_tokens_per_s"]["median"]
                    if "sae_step" in payload else prof["profiled_tokens_per_s"])  # fmt: skip
        limit = arithmetic(d, d * EXPANSION, achieved, max(args.repeats, _results.MIN_RUNS))
        payload["profile"] = {**prof, "arithmetic": limit}
        for part in PARTS:
            print(f"  {part:17s} {prof['ms_per_step'][part]:8.2f} ms/step "
                  f"({prof['share'][part]:.1%})")
        print(f"  fp32 matmul {limit['matmul']['gflop_per_s']['median']:.1f} GFLOP/s; "
              f"{limit['flops_per_token']['total']:,} FLOPs/token -> limit "
              f"{limit['limit_tokens_per_s']:,.0f} tokens/s; achieved {achieved:,.0f} "
              f"({limit['fraction_of_limit']:.1%})")  # fmt: skip
    _results.write_result(NAME, payload, _results.out_dir(args), started, quick=args.quick)


if __name__ == "__main__":
    main()
