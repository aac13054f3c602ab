"""Pack a document stream into fixed-length token sequences and batch them.

Packing follows SAELens: documents are tokenised without special tokens, joined into one
stream with EOS between documents, and cut into sequences of `context` tokens, each
starting with BOS (when `prepend_bos`). The last, short sequence is right-padded; padding
is never counted. A causal model never attends to later positions, so right-padding needs
no attention mask.

BOS, EOS and pad positions are not counted in statistics (SPEC §1) unless
`include_special`; `counted` marks the positions that are.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch

from saedoctor.errors import InputError

_TOKENIZE_CHUNK = 32  # documents per tokenizer call: fast tokenizers batch in parallel


@dataclass
class TokenBatch:
    """`input_ids` [B, T]; `counted` [B, T] marks positions statistics count;
    `first_sequence` is the global index of row 0 (for resume and per-sequence ids)."""

    input_ids: torch.Tensor
    counted: torch.Tensor
    first_sequence: int = 0
    lengths: torch.Tensor | None = None  # [B] real (unpadded) tokens per row

    def real(self) -> torch.Tensor:
        """[B, T] True where a position holds a real token rather than tail padding."""
        if self.lengths is None:
            return torch.ones_like(self.counted)
        return torch.arange(self.input_ids.shape[1])[None, :] < self.lengths[:, None]

    @property
    def sequence_ids(self) -> torch.Tensor:
        """[B] global sequence index of each row."""
        return torch.arange(self.input_ids.shape[0]) + self.first_sequence


def count_counted(batch: TokenBatch) -> int:
    return int(batch.counted.sum().item())


def _special_ids(tokenizer: Any) -> tuple[int | None, int | None, int | None]:
    """(bos, separator between documents, pad); each falls back on what the tokenizer has."""
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    bos = bos if bos is not None else eos  # e.g. GPT-2 style: one <|endoftext|> token
    sep = eos if eos is not None else bos
    pad = pad if pad is not None else (eos if eos is not None else bos)
    return bos, sep, pad


def _token_stream(tokenizer: Any, documents: Iterable[str], sep: int | None) -> Iterator[int]:
    """Token ids of all documents in order, `sep` between consecutive documents."""
    docs = iter(documents)
    first = True
    while chunk := list(islice(docs, _TOKENIZE_CHUNK)):
        # verbose=False: long documents are fine here, we cut them ourselves.
        encoded = tokenizer(chunk, add_special_tokens=False, verbose=False)["input_ids"]
        for ids in encoded:
            if not ids:
                continue
            if not first and sep is not None:
                yield sep
            first = False
            yield from ids


def _sequences(
    stream: Iterator[int], context: int, bos: int | None, pad: int
) -> Iterator[tuple[list[int], int]]:
    """(ids of length `context`, number of real tokens) per packed sequence."""
    body = context - (1 if bos is not None else 0)
    head = [bos] if bos is not None else []
    while chunk := list(islice(stream, body)):
        real = len(head) + len(chunk)
        yield head + chunk + [pad] * (context - real), real


def token_batches(
    tokenizer: Any,
    documents: Iterable[str],
    *,
    context: int,
    batch_size: int,
    max_tokens: int | None,
    prepend_bos: bool = True,
    include_special: bool = False,
    skip_sequences: int = 0,
    name: str = "corpus",
) -> Iterator[TokenBatch]:
    """Yield batches of packed sequences.

    At most `ceil(max_tokens / context)` sequences in all; the first `skip_sequences` of
    them are tokenised but not yielded, so a resumed run ends where a fresh one would.
    InputError if the documents hold no tokens at all (`name` identifies the corpus).
    """
    if context < 2 or batch_size < 1:
        raise InputError(f"context {context} / batch size {batch_size}: expected >= 2 and >= 1")
    bos, sep, pad = _special_ids(tokenizer)
    bos = bos if prepend_bos else None
    if pad is None:
        pad = 0  # no special tokens at all: padding positions are masked by `counted` anyway
    limit = None if max_tokens is None else math.ceil(max_tokens / context)
    seqs = _sequences(_token_stream(tokenizer, documents, sep), context, bos, pad)
    seqs = islice(seqs, limit)
    specials = [t for t in (bos, sep, tokenizer.pad_token_id) if t is not None]
    return _batched(seqs, batch_size, skip_sequences, specials, include_special, name)


def _batched(
    seqs: Iterator[tuple[list[int], int]],
    batch_size: int,
    skip: int,
    specials: list[int],
    include_special: bool,
    name: str,
) -> Iterator[TokenBatch]:
    index = 0
    seqs = _check_nonempty(seqs, name)
    for ids, real in seqs:
        if index < skip:
            index += 1
            continue
        rows, reals = [ids], [real]
        for ids_, real_ in islice(seqs, batch_size - 1):
            rows.append(ids_)
            reals.append(real_)
        yield _make_batch(rows, reals, specials, include_special, index)
        index += len(rows)


def _check_nonempty(
    seqs: Iterator[tuple[list[int], int]], name: str
) -> Iterator[tuple[list[int], int]]:
    """Pass sequences through; raise if the very first one has no document token."""
    first = next(seqs, None)
    if first is None:
        raise InputError(f"corpus {name} produced no tokens: expected non-empty text documents")
    yield first
    yield from seqs


def _make_batch(
    rows: list[list[int]], reals: list[int], specials: list[int], include_special: bool, first: int
) -> TokenBatch:
    input_ids = torch.tensor(rows, dtype=torch.long)
    positions = torch.arange(input_ids.shape[1])
    lengths = torch.tensor(reals)
    counted = positions[None, :] < lengths[:, None]  # never count tail padding
    if not include_special and specials:
        counted &= ~torch.isin(input_ids, torch.tensor(specials))
    return TokenBatch(input_ids, counted, first, lengths)
