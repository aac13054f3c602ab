"""SAEBench's first-letter feature-absorption metric on a language model (SPEC §2, optional).

The thin model-facing half: builds SAEBench's vocabulary (single tokens that are alphabetic,
optionally with one leading space), splits it 80/20 into train/test vocabularies, writes
SAEBench's in-context prompts (10 shuffled examples "{word} has the first letter: W" from the
same split, then "{word} has the first letter:"), reads the activation at the word's token at
the SAE's site, and hands them to `absorption_from_activations` (first_letter_core), which
does the probing and the absorption arithmetic. To save forward passes, one prompt reads
`words_per_prompt` words (each sees >= 10 answered examples before it; causal attention makes
the rest irrelevant). Deviations from SAEBench: docs/first_letter_absorption.md.
"""

from __future__ import annotations

import random
import time
from typing import Any

import torch

from saedoctor.activations.sites import SiteReader
from saedoctor.errors import InputError
from saedoctor.metrics.first_letter_core import (
    LETTERS,
    METHOD,
    FirstLetterSettings,
    absorption_from_activations,
    letter_index,
)
from saedoctor.sae.model import SAE
from saedoctor.sae.site import Site

__all__ = [
    "METHOD",
    "FirstLetterSettings",
    "absorption_from_activations",
    "alpha_vocabulary",
    "first_letter_absorption",
]

PROMPT_TEMPLATE = "{word} has the first letter:"
EXAMPLE_SEPARATOR = "\n"
MIN_WORDS = 26 * 4
_ALPHA = set(LETTERS + LETTERS.upper())


def _is_alpha_word(text: str) -> bool:
    """SAEBench vocab.get_alpha_tokens: ASCII letters only, one leading space allowed."""
    if text.startswith(" "):
        text = text[1:]
    return len(text) > 0 and all(ch in _ALPHA for ch in text)


def alpha_vocabulary(tokenizer: Any) -> dict[str, int]:
    """{word: token id} for every single token whose text is an alphabetic word.

    Sorted by token id (deterministic). Tokens whose text does not tokenize back to that
    one token are left out: the metric reads the activation at the word's own token.
    """
    vocab = tokenizer.get_vocab()
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    found: dict[str, int] = {}
    for token, tid in sorted(vocab.items(), key=lambda kv: kv[1]):
        if tid in special:
            continue
        text = tokenizer.convert_tokens_to_string([token])
        if _is_alpha_word(text) and text not in found:
            found[text] = tid
    words = list(found)
    encoded = tokenizer(words, add_special_tokens=False)["input_ids"] if words else []
    return {w: found[w] for w, ids in zip(words, encoded, strict=True) if ids == [found[w]]}


def _answer(word: str) -> str:
    """SAEBench first_letter_formatter: a space and the capitalised first letter."""
    return " " + LETTERS[letter_index(word)].upper()


def _example(word: str) -> str:
    return PROMPT_TEMPLATE.format(word=word) + _answer(word)


def _pack(
    reads: list[str], examples: list[str], rng: random.Random, warmup: int
) -> tuple[str, list[str]]:
    """One prompt reading several words; returns (text, prefix texts ending at each word).

    SAEBench's create_icl_prompt is `warmup` shuffled examples "{w} has the first letter: W"
    (joined by newlines, the word itself excluded) and then "{word} has the first letter:".
    Attention is causal, so the activation at a word's token depends only on the text before
    it: reading several words from one prompt of examples gives each of them that same kind
    of context, with `warmup` + (words read before it) examples in front.
    """
    taken = set(reads)
    pool = [w for w in examples if w not in taken]
    shots = rng.sample(pool, min(warmup, len(pool)))
    prefixes, parts = [], [_example(w) for w in shots]
    for word in reads:
        sep = EXAMPLE_SEPARATOR if parts else ""
        prefixes.append(EXAMPLE_SEPARATOR.join(parts) + sep + word)
        parts.append(_example(word))
    parts[-1] = PROMPT_TEMPLATE.format(word=reads[-1])  # SAEBench's prompt ends at the colon
    return EXAMPLE_SEPARATOR.join(parts), prefixes


def _special_ids(tokenizer: Any) -> tuple[int | None, int]:
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    bos = bos if bos is not None else eos
    pad = pad if pad is not None else (eos if eos is not None else 0)
    return bos, pad


def _tokenize(tokenizer: Any, texts: list[str], bos: int | None) -> list[list[int]]:
    head = [bos] if bos is not None else []
    return [head + ids for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


@torch.no_grad()
def _read_word_acts(
    model: Any,
    tokenizer: Any,
    site: Site,
    prompts: list[tuple[str, list[str], list[int]]],
    batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Activation at every read word's token, in prompt order; also a mask of the words whose
    token sat where expected (the tokenizer may merge across a word's boundary)."""
    bos, pad = _special_ids(tokenizer)
    out: list[torch.Tensor] = []
    ok: list[bool] = []
    with SiteReader(model, [site]) as reader:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            seqs = _tokenize(tokenizer, [text for text, _, _ in chunk], bos)
            rows, cols = [], []
            for i, (seq, (_, prefixes, word_ids)) in enumerate(zip(seqs, chunk, strict=True)):
                for pre, wid in zip(_tokenize(tokenizer, prefixes, bos), word_ids, strict=True):
                    p = len(pre) - 1
                    ok.append(p < len(seq) and seq[: p + 1] == pre and pre[-1] == wid)
                    rows.append(i)
                    cols.append(min(p, len(seq) - 1))
            width = max(len(s) for s in seqs)
            # Right padding: causal attention keeps the pads out of every real position.
            ids = torch.full((len(seqs), width), pad, dtype=torch.long)
            for i, seq in enumerate(seqs):
                ids[i, : len(seq)] = torch.tensor(seq)
            acts = reader.read(ids)[site]
            out.append(acts[torch.tensor(rows), torch.tensor(cols)].float().cpu())
    return torch.cat(out), torch.tensor(ok, dtype=torch.bool)


def first_letter_absorption(
    model: Any,
    tokenizer: Any,
    sae: SAE,
    site: Site,
    *,
    max_words: int = 1000,
    device: str = "cpu",
    seed: int = 0,
    batch_size: int = 32,
    settings: FirstLetterSettings | None = None,
) -> dict[str, Any]:
    """SAEBench first-letter absorption of `sae` at `site` of `model` (lower is better).

    Uses at most `max_words` words (a seeded sample of the vocabulary, split 80/20 into
    train/test as SAEBench splits the whole vocabulary); one truncated forward per prompt.
    Raises InputError when the vocabulary is too small or no letter can be measured.
    """
    s = settings or FirstLetterSettings()
    t0 = time.perf_counter()
    if max_words < MIN_WORDS:
        raise InputError(f"--max-words {max_words}: expected at least {MIN_WORDS} (26 x 4)")
    vocab = alpha_vocabulary(tokenizer)
    if len(vocab) < MIN_WORDS:
        raise InputError(
            f"first-letter absorption: the tokenizer has {len(vocab)} single-token alphabetic "
            f"words, need at least {MIN_WORDS} (26 x 4)"
        )
    rng = random.Random(seed)
    words = list(vocab)
    rng.shuffle(words)
    cut = int(len(words) * s.train_fraction)
    train_vocab, test_vocab = words[:cut], words[cut:]  # ICL examples come from these
    n_train = min(len(train_vocab), round(max_words * s.train_fraction))
    n_test = min(len(test_vocab), max_words - n_train)
    chosen = [(w, True) for w in train_vocab[:n_train]] + [(w, False) for w in test_vocab[:n_test]]
    m = max(1, s.words_per_prompt)
    prompts = []
    for is_train, pool in ((True, train_vocab), (False, test_vocab)):
        group = [w for w, tr in chosen if tr == is_train]
        for i in range(0, len(group), m):
            reads = group[i : i + m]
            text, prefixes = _pack(reads, pool, rng, s.max_icl_examples)
            prompts.append((text, prefixes, [vocab[w] for w in reads]))

    was_training = model.training
    model.eval()
    try:
        acts, ok = _read_word_acts(model, tokenizer, site, prompts, batch_size)
    finally:
        model.train(was_training)
    t_acts = time.perf_counter() - t0
    keep = ok.nonzero().squeeze(1)
    if keep.numel() < MIN_WORDS:
        raise InputError(
            f"first-letter absorption: only {keep.numel()} usable words, need {MIN_WORDS}"
        )
    kept_words = [chosen[i][0] for i in keep.tolist()]
    train_mask = torch.tensor([chosen[i][1] for i in keep.tolist()], dtype=torch.bool)
    result = absorption_from_activations(
        acts[keep],
        kept_words,
        sae,
        train_mask=train_mask,
        seed=seed,
        device=device,
        settings=s,
    )
    result["settings"].update(
        {
            "max_words": max_words,
            "batch_size": batch_size,
            "prompt_template": PROMPT_TEMPLATE,
            "n_prompts": len(prompts),
            "site": site.hook_name,
            "vocab_size_alpha": len(vocab),
            "n_dropped_tokenization": int((~ok).sum()),
        }
    )
    result["runtime_s"] = {
        "activations": round(t_acts, 2),
        "total": round(time.perf_counter() - t0, 2),
    }
    return result
