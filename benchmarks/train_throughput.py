"""Training throughput, saedoctor vs SAELens: same model, layer, width, k, batch, tokens.

    .venv/bin/python benchmarks/train_throughput.py [--layer 10] [--tokens 16384]
        [--repeats 5] [--warmup 1] [--threads 0] [--model default] [--skip-e2e]
        [--skip-sae-only] [--quick] [--out DIR]

End to end (text → tokens → LM forward → TopK SAE training, the way each tool is used):
- saedoctor: `saedoctor.train.train` (health monitor on, checkpoints off, SAE saved);
- SAELens: `LanguageModelSAETrainingRunner` with the same HF model wrapped in its
  `HookedProxyLM` (which, like saedoctor, stops the forward after the hooked block), the same
  packed token sequences (a tokenized `datasets.Dataset`), special tokens excluded like
  saedoctor, the same buffer size (32 768 tokens), batch (1 024 tokens), k and width.
SAE only: both train on the same in-memory activations (no LM), so the SAE step is compared.

The tools run alternately (A B A B ...) in one process after `--warmup` unrecorded rounds, so
background load hits both alike; each side's median of `--repeats` runs is reported with min
and max (tokens trained per second of wall time, model loading excluded, everything else
included), and the ratio is taken round by round. Writes `<out>/train_throughput.json`.
The machine may be shared: compare the ratio, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import _results

NAME = "train_throughput"
EXPANSION, K, CONTEXT, BATCH_SEQS = 8, 32, 128, 8
BUFFER_TOKENS = 32_768
QUICK_TOKENS = 4096


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
            train_batch_size_tokens=1024, store_batch_size_prompts=BATCH_SEQS,
            n_batches_in_buffer=BUFFER_TOKENS // (BATCH_SEQS * CONTEXT), device="cpu",
            lr=2e-4 / (d * EXPANSION / 2**14) ** 0.5, n_checkpoints=0,
            save_final_checkpoint=False, checkpoint_path=str(Path(tmp) / "ckpt"),
            output_path=str(Path(tmp) / "out"), n_eval_batches=0,
            logger=LoggingConfig(log_to_wandb=False),
        )  # fmt: skip
        proxy = HookedProxyLM(loaded.model, loaded.tokenizer, hook_names=[hook])
        start = time.perf_counter()  # from text, as saedoctor: tokenising is timed too
        dataset = Dataset.from_dict({"tokens": sequences(loaded, corpus, tokens)})
        runner = LanguageModelSAETrainingRunner(cfg, override_dataset=dataset,
                                                override_model=proxy)  # fmt: skip
        runner.run()
        wall = time.perf_counter() - start
    return tokens / wall


def sae_only(d: int, tokens: int, acts: torch.Tensor) -> tuple[Any, Any]:
    """Two closures training a TopK SAE on the same in-memory activations."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    from saedoctor.train.config import TrainConfig
    from saedoctor.train.trainer import train_on_activations

    lr = 2e-4 / (d * EXPANSION / 2**14) ** 0.5

    def ours() -> float:
        cfg = TrainConfig(layers=[0], training_tokens=tokens, expansion_factor=EXPANSION,
                          top_k=K, batch_size=BATCH_SEQS, context=CONTEXT,
                          shuffle_tokens=BUFFER_TOKENS, checkpoint_every=0)  # fmt: skip
        start = time.perf_counter()
        result = train_on_activations(cfg, acts[:tokens])
        return result.tokens / (time.perf_counter() - start)

    def theirs() -> float:
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=d * EXPANSION, k=K,
                                                    normalize_activations="none"))  # fmt: skip
        steps = tokens // 1024
        cfg = SAETrainerConfig(
            n_checkpoints=0, checkpoint_path=None, save_final_checkpoint=False,
            total_training_samples=steps * 1024, device="cpu", autocast=False, lr=lr,
            lr_end=lr, lr_scheduler_name="constant", lr_warm_up_steps=0, adam_beta1=0.9,
            adam_beta2=0.999, lr_decay_steps=0, n_restart_cycles=1,
            train_batch_size_samples=1024, dead_feature_window=1000,
            feature_sampling_window=2000, logger=LoggingConfig(log_to_wandb=False),
        )  # fmt: skip
        gen = torch.Generator().manual_seed(0)
        order = torch.randperm(acts[:tokens].shape[0], generator=gen)
        provider = iter(acts[order[i * 1024 : (i + 1) * 1024]] for i in range(steps))
        start = time.perf_counter()
        SAETrainer(cfg, sae, provider).fit()
        return steps * 1024 / (time.perf_counter() - start)

    return ours, theirs


def show_run(name: str, run: int, value: float) -> None:
    print(f"  run {run} {name}: {value:,.0f} tokens/s", flush=True)


def compare(title: str, runs: dict[str, list[float]], reason: str | None) -> dict[str, Any]:
    """Both sides' throughputs and the round-by-round ratio saedoctor / SAELens."""
    block = {
        "saedoctor_tokens_per_s": _results.timing(runs["saedoctor"], allow_fewer=reason),
        "saelens_tokens_per_s": _results.timing(runs["SAELens"], allow_fewer=reason),
        "ratio": _results.timing(_results.paired_ratios(runs["saedoctor"], runs["SAELens"]),
                                 allow_fewer=reason),
    }  # fmt: skip
    ours, theirs, ratio = (
        block["saedoctor_tokens_per_s"],
        block["saelens_tokens_per_s"],
        block["ratio"],
    )
    print(f"{title}: saedoctor {ours['median']:,.0f} tokens/s, SAELens {theirs['median']:,.0f} "
          f"tokens/s, ratio {ratio['median']:.2f}x (median of {ours['n']} alternating runs "
          f"each; ratio min {ratio['min']:.2f}, max {ratio['max']:.2f})")  # fmt: skip
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
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--model", default=None)
    ap.add_argument("--corpus", default="python-docs@train")
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--skip-sae-only", action="store_true")
    _results.add_arguments(ap)
    args = ap.parse_args()
    if args.quick:
        args.tokens, args.repeats, args.warmup = QUICK_TOKENS, _results.QUICK_RUNS, 0
    if args.threads:
        torch.set_num_threads(args.threads)
    reason = _results.fewer_reason(args.repeats, args.quick)
    logging.getLogger("sae_lens").setLevel(logging.ERROR)
    transformers.logging.set_verbosity_error()
    from saedoctor.activations.model import load_model

    loaded = load_model(args.model)
    print(f"model {loaded.name}, layer {args.layer}, d_sae {loaded.d_model * EXPANSION}, k {K}, "
          f"{args.tokens:,} tokens per run, {torch.get_num_threads()} threads, "
          f"{args.warmup} warm-up + {args.repeats} alternating runs")  # fmt: skip
    payload: dict[str, Any] = {"settings": {
        "model": loaded.name, "layer": args.layer, "d_in": loaded.d_model,
        "d_sae": loaded.d_model * EXPANSION, "k": K, "tokens_per_run": args.tokens,
        "batch_tokens": 1024, "buffer_tokens": BUFFER_TOKENS, "context": CONTEXT,
        "corpus": args.corpus, "repeats": args.repeats, "warmup_rounds": args.warmup,
        "torch_threads": torch.get_num_threads()}}  # fmt: skip
    if not args.skip_sae_only:
        gen = torch.Generator().manual_seed(0)
        d = loaded.d_model
        acts = torch.randn(args.tokens, d, generator=gen) * 2 + torch.randn(d, generator=gen) * 4
        ours, theirs = sae_only(d, args.tokens, acts)
        print("SAE only (same in-memory activations):")
        runs = _results.alternate({"saedoctor": ours, "SAELens": theirs}, args.repeats,
                                  warmup=args.warmup, on_run=show_run)  # fmt: skip
        payload["sae_step"] = compare("SAE only", runs, reason)
    if not args.skip_e2e:
        print("end to end (text → LM forward → SAE):")
        runs = _results.alternate({
            "saedoctor": lambda: run_saedoctor(loaded, args.layer, args.tokens, args.corpus),
            "SAELens": lambda: run_saelens(loaded, args.layer, args.tokens, args.corpus),
        }, args.repeats, warmup=args.warmup, on_run=show_run)  # fmt: skip
        payload["e2e"] = compare("end to end", runs, reason)
    _results.write_result(NAME, payload, _results.out_dir(args), started, quick=args.quick)


if __name__ == "__main__":
    main()
