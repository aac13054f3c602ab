"""Shared fixtures: a tiny Llama-architecture model with its own tokenizer, saved locally."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

# `ci` (default) keeps every fuzz test in tests/test_fuzz.py together under a minute on two
# cores and replays the same examples on every run; `make fuzz` uses `fuzz`: 20x the examples,
# fresh ones each run.
_FUZZ_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile(
    "ci", max_examples=25, deadline=None, derandomize=True, suppress_health_check=_FUZZ_HEALTH
)
settings.register_profile(
    "fuzz", max_examples=500, deadline=None, derandomize=False, suppress_health_check=_FUZZ_HEALTH
)
settings.load_profile("ci")

TINY_TEXT = [
    "Return the number of items in a container.",
    "def add(a, b):\n    return a + b\n",
    "The quick brown fox jumps over the lazy dog.",
    "Sparse autoencoders decompose activations into features.",
    "class Stack:\n    def push(self, item):\n        self.items.append(item)\n",
]


def build_tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TINY_TEXT * 20, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def save_tiny_llama(directory: Path, n_layers: int = 4, hidden: int = 64) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture()
def text_corpus(tmp_path: Path) -> Path:
    """A small .jsonl corpus of varied documents."""
    import json

    path = tmp_path / "corpus.jsonl"
    rows = [
        {"text": f"{t} Document {i} talks about item {i * 7 % 13}."}
        for i, t in enumerate(TINY_TEXT * 12)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def linear_gpt2():
    """A tiny GPT-2 whose MLPs are affine, block 1's loud (tests/tiny_gpt2.py builds it)."""
    from tiny_gpt2 import build_linear_gpt2

    return build_linear_gpt2()


@pytest.fixture()
def one_thread():
    """Tiny matrices: a second thread only adds OpenMP barriers (and, on a shared machine,
    waits for the other process)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
