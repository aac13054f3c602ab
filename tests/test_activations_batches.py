"""Token packing into batches, and precomputed activation files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from saedoctor.activations.batches import TokenBatch, count_counted, token_batches
from saedoctor.activations.cached import iter_cached_batches, load_cached_activations
from saedoctor.errors import InputError

WORDS = "a b c d e f g h".split()
UNK, BOS, EOS, PAD = 0, 1, 2, 3  # ids of the special tokens; word w has id 4 + index


def tokenizer(*, bos: bool = True, pad: bool = True) -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(["<unk>", "<bos>", "<eos>", "<pad>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = {"unk_token": "<unk>", "eos_token": "<eos>"}
    if bos:
        specials["bos_token"] = "<bos>"
    if pad:
        specials["pad_token"] = "<pad>"
    return PreTrainedTokenizerFast(tokenizer_object=backend, **specials)


def w(text: str) -> list[int]:
    return [4 + WORDS.index(t) for t in text.split()]


def run(docs: list[str], **kw) -> list[TokenBatch]:
    args = {"context": 4, "batch_size": 2, "max_tokens": None, **kw}
    tok = args.pop("tok", None) or tokenizer()
    return list(token_batches(tok, docs, **args))


def test_packing_with_bos_and_eos_between_documents() -> None:
    batches = run(["a b c", "d e", "f g h"])
    ids = torch.cat([b.input_ids for b in batches]).tolist()
    assert ids == [
        [BOS, *w("a b c")],
        [BOS, EOS, *w("d e")],
        [BOS, EOS, *w("f g")],
        [BOS, *w("h"), PAD, PAD],  # short tail, right-padded
    ]
    counted = torch.cat([b.counted for b in batches]).tolist()
    assert counted == [
        [False, True, True, True],
        [False, False, True, True],
        [False, False, True, True],
        [False, True, False, False],
    ]
    assert [b.input_ids.shape[0] for b in batches] == [2, 2]
    assert [count_counted(b) for b in batches] == [5, 3]
    assert [b.first_sequence for b in batches] == [0, 2]
    assert batches[1].sequence_ids.tolist() == [2, 3]


def test_include_special_counts_bos_eos_but_never_tail_padding() -> None:
    batches = run(["a b c", "d e", "f g h"], include_special=True)
    counted = torch.cat([b.counted for b in batches])
    assert counted[:3].all()
    assert counted[3].tolist() == [True, True, False, False]


def test_no_bos_prepends_eos_and_pads_with_eos() -> None:
    batches = run(["a b c", "d"], tok=tokenizer(bos=False, pad=False))
    assert batches[0].input_ids.tolist() == [[EOS, *w("a b c")], [EOS, EOS, *w("d"), EOS]]
    assert batches[0].counted.tolist()[1] == [False, False, True, False]


def test_without_prepend_bos() -> None:
    batches = run(["a b c", "d e f g"], prepend_bos=False)
    assert batches[0].input_ids.tolist() == [[*w("a b c"), EOS], [*w("d e f g")]]


def test_max_tokens_rounds_up_to_whole_sequences() -> None:
    docs = ["a b c d e f g h"] * 20
    for max_tokens, expected in ((1, 1), (4, 1), (5, 2), (12, 3)):
        got = sum(b.input_ids.shape[0] for b in run(docs, max_tokens=max_tokens))
        assert got == expected
    batches = run(docs, max_tokens=12, batch_size=2)
    assert [b.input_ids.shape for b in batches] == [(2, 4), (1, 4)]


def test_skip_sequences_resumes_where_a_full_run_would() -> None:
    docs = ["a b c d e f g h", "a b", "c d e"] * 5
    full = torch.cat([b.input_ids for b in run(docs, max_tokens=40)])
    for skip in (0, 1, 3, 9, 10, 50):
        batches = run(docs, max_tokens=40, skip_sequences=skip)
        rest = [b.input_ids for b in batches]
        assert torch.equal(torch.cat(rest) if rest else full[:0], full[skip:])
        if batches:
            assert batches[0].first_sequence == skip


def test_lazy_tokenisation() -> None:
    def endless():
        while True:
            yield "a b c d e f g h"

    batches = list(token_batches(tokenizer(), endless(), context=4, batch_size=3, max_tokens=20))
    assert sum(b.input_ids.shape[0] for b in batches) == 5


def test_empty_corpus_is_input_error() -> None:
    with pytest.raises(InputError, match="corpus empty-one produced no tokens"):
        list(
            token_batches(
                tokenizer(), [], context=4, batch_size=2, max_tokens=None, name="empty-one"
            )
        )
    with pytest.raises(InputError, match="produced no tokens"):
        run([""])


def test_bad_context() -> None:
    with pytest.raises(InputError, match="context 1"):
        run(["a"], context=1)


# ---- cached activations --------------------------------------------------------------------


def test_load_safetensors_rank2_and_rank3(tmp_path: Path) -> None:
    x = torch.randn(10, 8, dtype=torch.float16)
    save_file({"acts": x}, tmp_path / "a.safetensors")
    got = load_cached_activations(tmp_path / "a.safetensors")
    assert got.dtype == torch.float32 and torch.equal(got, x.float())
    y = torch.randn(3, 5, 8, dtype=torch.float64)
    save_file({"acts": y}, tmp_path / "b.safetensors")
    assert torch.equal(load_cached_activations(str(tmp_path / "b.safetensors")), y)


def test_load_npy(tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    np.save(tmp_path / "a.npy", x)
    assert torch.equal(load_cached_activations(tmp_path / "a.npy"), torch.from_numpy(x))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda p: save_file(
                {"a": torch.zeros(2, 2), "b": torch.zeros(2, 2)}, p / "x.safetensors"
            ),
            "expected exactly one tensor, found 2 \\(a, b\\)",
        ),
        (
            lambda p: save_file({"a": torch.zeros(4)}, p / "x.safetensors"),
            "shape \\[4\\], expected \\[tokens, d_in\\]",
        ),
        (
            lambda p: save_file({"a": torch.zeros(2, 3, dtype=torch.int64)}, p / "x.safetensors"),
            "dtype torch.int64, expected floating point",
        ),
        (
            lambda p: save_file(
                {"a": torch.tensor([[1.0, float("nan")], [float("inf"), 0.0]])}, p / "x.safetensors"
            ),
            "2 non-finite values",
        ),
        (
            lambda p: save_file({"a": torch.zeros(0, 3)}, p / "x.safetensors"),
            "shape \\[0, 3\\] holds no activations",
        ),
        (lambda p: (p / "x.safetensors").write_bytes(b"garbage"), "not a readable safetensors"),
        (lambda p: np.save(p / "x.npy", np.array([{"a": 1}], dtype=object)), "not a readable .npy"),
        (
            lambda p: np.save(p / "x.npy", np.zeros((2, 2), dtype=np.int32)),
            "dtype int32, expected a float array",
        ),
        (lambda p: (p / "x.pt").write_bytes(b""), "unknown file type '.pt'"),
    ],
)
def test_bad_cached_activations(tmp_path: Path, make, message: str) -> None:
    make(tmp_path)
    path = next(tmp_path.iterdir())
    with pytest.raises(InputError, match=f"activations {path}: {message}"):
        load_cached_activations(path)


def test_missing_cached_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found"):
        load_cached_activations(tmp_path / "none.npy")


def test_iter_cached_batches_rank3_whole_sequences() -> None:
    x = torch.arange(5 * 3 * 2, dtype=torch.float32).reshape(5, 3, 2)
    batches = list(iter_cached_batches(x, batch_tokens=7))  # 7 tokens -> 2 sequences of 3
    assert [b.shape[0] for b, _ in batches] == [6, 6, 3]
    assert torch.cat([s for _, s in batches]).tolist() == [
        0,
        0,
        0,
        1,
        1,
        1,
        2,
        2,
        2,
        3,
        3,
        3,
        4,
        4,
        4,
    ]
    assert torch.equal(torch.cat([b for b, _ in batches]), x.reshape(-1, 2))


def test_iter_cached_batches_rank2_chunks_by_context() -> None:
    x = torch.randn(10, 4)
    batches = list(iter_cached_batches(x, batch_tokens=2, context=4))  # at least 1 sequence
    assert [b.shape[0] for b, _ in batches] == [4, 4, 2]
    assert [s.tolist() for _, s in batches] == [[0] * 4, [1] * 4, [2] * 2]
    big = list(iter_cached_batches(x, batch_tokens=100))  # default context 128: one sequence
    assert len(big) == 1 and big[0][1].tolist() == [0] * 10
