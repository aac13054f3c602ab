"""FeatureCards against a naive per-feature recomputation in plain Python.

Activations are m * 2**e (m in 1..7) and targets multiples of 1/4, so every float64 sum is
exact and states of different batch splits can be compared with torch.equal.
"""

from __future__ import annotations

import bisect
import random
from collections import Counter
from dataclasses import dataclass

import pytest
import torch

from saedoctor.metrics import cards as cards_module
from saedoctor.metrics.cards import (
    HIST_EDGES,
    MOMENT_SAMPLE,
    Context,
    FeatureCards,
    firing_priority,
    row_hash,
)
from saedoctor.sae.codes import Codes

D, D_IN, K = 24, 5, 4
TOP, RAND, BEFORE, AFTER, SKETCH = 4, 3, 3, 2, 6
M64 = (1 << 64) - 1
EMPTY = (1 << 63) - 1  # an empty sketch slot


@dataclass
class Row:
    seq: int
    pos: int
    tok: int
    acts: dict[int, float]  # feature -> code (may be <= 0)
    x: list[float]


def py_mix(x: int) -> int:
    x &= M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def py_row_hash(seq: int, pos: int) -> int:
    return py_mix(py_mix(seq + 0x9E3779B97F4A7C15) + pos)


def py_key(seq: int, pos: int, feat: int, tok: int) -> int:
    prio = py_mix(py_row_hash(seq, pos) + py_mix(feat + 0x9E3779B97F4A7C15)) >> 26
    return (prio << 24) | tok


def value(rng: random.Random) -> float:
    """A float32-exact activation; one in three is the same large value (ties at the top)."""
    if rng.random() < 0.3:
        return 7.0 * 2.0**3
    return rng.randint(1, 7) * 2.0 ** rng.randint(-15, 3)


def make_data(seed: int, n_seq: int = 30, dense: bool = False) -> list[list[Row]]:
    rng = random.Random(seed)
    ids = rng.sample(range(10_000), n_seq)
    data = []
    for s in ids:
        length = rng.randint(1, 14)
        positions = sorted(rng.sample(range(2 * length + 2), length))  # gaps in positions
        rows = []
        for p in positions:
            feats = range(D) if dense else rng.sample(range(D), K)
            acts = {f: value(rng) if rng.random() < (0.3 if dense else 0.8) else
                    rng.choice([0.0, -0.5]) for f in feats}  # fmt: skip
            x = [rng.randint(-8, 8) / 4 for _ in range(D_IN)]
            rows.append(Row(s, p, rng.randrange(40), acts, x))
        data.append(rows)
    return data


def tensors(seqs: list[list[Row]], dense: bool, shuffle: int | None = None) -> tuple:
    rows = [r for s in seqs for r in s]
    if shuffle is not None:  # rows in any order: windows follow positions, not row order
        random.Random(shuffle).shuffle(rows)
    if dense:
        vals = torch.tensor([[r.acts[f] for f in range(D)] for r in rows]).reshape(-1, D)
        codes = Codes(vals, None, D)
    else:
        idx = torch.tensor([list(r.acts) for r in rows], dtype=torch.int64).reshape(-1, K)
        vals = torch.tensor([list(r.acts.values()) for r in rows]).reshape(-1, K)
        codes = Codes(vals, idx, D)
    x = torch.tensor([r.x for r in rows]).reshape(-1, D_IN)
    ints = [torch.tensor([getattr(r, a) for r in rows], dtype=torch.int64)
            for a in ("seq", "pos", "tok")]  # fmt: skip
    return (x, codes, *ints)


def new_cards() -> FeatureCards:
    return FeatureCards(D, D_IN, top=TOP, random=RAND, before=BEFORE, after=AFTER,
                        token_sketch=SKETCH)  # fmt: skip


def fed(batches: list[list[list[Row]]], dense: bool, shuffle: int | None = None) -> FeatureCards:
    cards = new_cards()
    for b in batches:
        cards.update(*tensors(b, dense, shuffle))
    return cards


def chunks(seqs: list, sizes: list[int]) -> list[list]:
    out, at = [], 0
    for n in sizes:
        out.append(seqs[at : at + n])
        at += n
    return out + [seqs[at:]] if at < len(seqs) else out


# ---- the naive reference ----


def naive_context(seq_rows: list[Row], i: int, f: int) -> Context:
    lo = max(0, i - BEFORE)
    window = seq_rows[lo : i + AFTER + 1]
    r = seq_rows[i]
    return Context(r.seq, r.pos, r.acts[f], [w.tok for w in window],
                   [max(w.acts.get(f, 0.0), 0.0) for w in window], i - lo)  # fmt: skip


def firings(data: list[list[Row]], f: int) -> list[tuple[list[Row], int]]:
    return [(s, i) for s in data for i, r in enumerate(s) if r.acts.get(f, 0.0) > 0]


def naive_top(data: list[list[Row]], f: int) -> list[Context]:
    fs = sorted(firings(data, f), key=lambda e: (-e[0][e[1]].acts[f], e[0][e[1]].seq,
                                                 e[0][e[1]].pos))  # fmt: skip
    return [naive_context(s, i, f) for s, i in fs[:TOP]]


def sketch_key(s: list[Row], i: int, f: int) -> int:
    return py_key(s[i].seq, s[i].pos, f, s[i].tok)


def naive_random(data: list[list[Row]], f: int) -> list[Context]:
    fs = sorted(firings(data, f), key=lambda e: (sketch_key(*e, f), e[0][e[1]].seq,
                                                 e[0][e[1]].pos))  # fmt: skip
    return [naive_context(s, i, f) for s, i in fs[:RAND]]


def naive_sketch(data: list[list[Row]], f: int) -> list[int]:
    return sorted(sketch_key(s, i, f) for s, i in firings(data, f))[:SKETCH]


def naive_hist(data: list[list[Row]], f: int) -> list[int]:
    counts = [0] * (len(HIST_EDGES) + 1)
    for s, i in firings(data, f):
        counts[bisect.bisect_right(HIST_EDGES, s[i].acts[f])] += 1
    return counts


def naive_position(data: list[list[Row]], f: int) -> tuple[float, float]:
    rows = [r for s in data for r in s]
    a = [max(r.acts.get(f, 0.0), 0.0) for r in rows]
    p = [float(r.pos) for r in rows]
    n = len(rows)
    ma, mp = sum(a) / n, sum(p) / n
    cov = sum((x - ma) * (y - mp) for x, y in zip(a, p, strict=True))
    va, vp = sum((x - ma) ** 2 for x in a), sum((y - mp) ** 2 for y in p)
    corr = cov / (va * vp) ** 0.5 if va > 0 and vp > 0 else float("nan")
    fired = [i for s in data for i, r in enumerate(s) if r.acts.get(f, 0.0) > 0]
    share = sum(i == 0 for i in fired) / len(fired) if fired else float("nan")
    return corr, share


def same(a: float, b: float) -> bool:
    return (a != a and b != b) or abs(a - b) <= 1e-9


# ---- tests ----


CASES = [(False, None, False), (True, None, False), (False, 3, False), (False, None, True)]


@pytest.mark.parametrize("dense,shuffle,search", CASES)
def test_matches_naive_recomputation(
    dense: bool, shuffle: int | None, search: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if search:  # window activations by binary search, as in large first batches
        monkeypatch.setattr(cards_module, "_COMPARE_LIMIT", 0)
    data = make_data(1, dense=dense)
    cards = fed(chunks(data, [4, 9, 1, 7]), dense, shuffle)
    got = cards.contexts(range(D))
    for f in range(D):
        assert got[f].top == naive_top(data, f), f
        assert got[f].random == naive_random(data, f), f
        keys = naive_sketch(data, f)
        assert cards.sketch[f].tolist() == keys + [EMPTY] * (SKETCH - len(keys))
        assert cards.hist[f].tolist() == naive_hist(data, f)
    stats = cards.position_stats()
    for f in range(D):
        corr, share = naive_position(data, f)
        assert same(float(stats.position_corr[f]), corr), f
        assert same(float(stats.first_token_share[f]), share), f


def test_hash_is_the_documented_splitmix_with_wrapping_int64() -> None:
    """Row hash and priority equal the same hash computed on Python integers mod 2**64."""
    seqs, poss, feats = [0, 7, 2**40 + 3, 123456789], [0, 1, 5, 2**20], [0, 3, 65535, 17]
    rows = row_hash(torch.tensor(seqs), torch.tensor(poss))
    cases = list(zip(seqs, poss, feats, strict=True))
    assert [h & M64 for h in rows.tolist()] == [py_row_hash(s, p) for s, p, _ in cases]
    prio = firing_priority(rows, torch.tensor(feats)).tolist()
    assert prio == [py_key(s, p, f, 0) >> 24 for s, p, f in cases]


def test_token_concentration_and_moments() -> None:
    data = make_data(2)
    cards = fed(chunks(data, [10, 10]), dense=False)
    share, size = cards.token_concentration(top=2)
    for f in range(D):
        toks = [k & ((1 << 24) - 1) for k in naive_sketch(data, f)]
        assert int(size[f]) == len(toks)
        best = sum(c for _, c in Counter(toks).most_common(2))
        assert same(float(share[f]), best / len(toks) if toks else float("nan"))
    rows = [r for s in data for r in s if py_row_hash(r.seq, r.pos) % MOMENT_SAMPLE == 0]
    x = torch.tensor([r.x for r in rows], dtype=torch.float64)
    mean, cov, n = cards.moments()
    assert n == len(rows) > 0
    assert torch.allclose(mean, x.mean(0), atol=1e-12)
    assert torch.allclose(cov, torch.cov(x.T, correction=0), atol=1e-12)


@pytest.mark.parametrize("dense", [False, True])
def test_any_split_and_merge_order_gives_equal_state(dense: bool) -> None:
    data = make_data(3, dense=dense)
    one = fed([data], dense).state_dict()
    per_sequence = fed([[s] for s in data], dense, shuffle=5).state_dict()
    a_part, b_part = data[::2], data[1::2]
    ab = fed(chunks(a_part, [3, 5]), dense).merge(fed([b_part], dense)).state_dict()
    ba = fed([b_part], dense).merge(fed(chunks(a_part, [2]), dense)).state_dict()
    for other in (per_sequence, ab, ba):
        assert one.keys() == other.keys()
        for k in one:
            assert torch.equal(one[k], other[k]), k


def test_state_round_trip_and_wrong_state_fails_loudly() -> None:
    data = make_data(4)
    cards = fed([data[:15]], dense=False)
    restored = new_cards()
    restored.load_state_dict(cards.state_dict("cards."), "cards.")
    for c in (cards, restored):
        c.update(*tensors(data[15:], dense=False))
    a, b = cards.state_dict(), restored.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="top_key"):
        FeatureCards(D + 1, D_IN).load_state_dict(a)
    with pytest.raises(ValueError, match="lacks"):
        new_cards().load_state_dict({k: v for k, v in a.items() if k != "sketch"})
    with pytest.raises(ValueError, match="int32"):
        new_cards().load_state_dict({**a, "top_tok": a["top_tok"].long()})
    with pytest.raises(ValueError, match="cannot merge"):
        cards.merge(FeatureCards(D, D_IN))


def test_state_size_does_not_grow_with_tokens() -> None:
    def size(c: FeatureCards) -> int:
        return sum(t.numel() * t.element_size() for t in c.state_dict().values())

    empty = new_cards()
    small = fed([make_data(5, n_seq=2)], dense=False)
    large = fed(chunks(make_data(6, n_seq=200), [50] * 4), dense=False)
    assert int(large.tokens) > 50 * int(small.tokens) > 0
    assert size(empty) == size(small) == size(large)


def test_planted_first_token_and_position_features() -> None:
    """Feature 0 fires only on each sequence's first counted row (its position is often > 0),
    feature 1's activation is its position: share 1 and correlation 1, computed naively."""
    rng = random.Random(7)
    data = []
    for s in range(20):
        positions = sorted(rng.sample(range(1, 40), rng.randint(2, 12)))
        data.append([Row(s, p, rng.randrange(40), {0: 2.0 if i == 0 else 0.0, 1: float(p),
                                                   2: rng.choice([0.0, 1.0]), 3: 0.0},
                         [0.0] * D_IN) for i, p in enumerate(positions)])  # fmt: skip
    cards = fed(chunks(data, [6, 6]), dense=False)
    stats = cards.position_stats()
    assert float(stats.first_token_share[0]) == 1.0 == naive_position(data, 0)[1]
    assert float(stats.first_token_share[1]) < 1.0
    corr = naive_position(data, 1)[0]
    assert abs(corr - 1.0) < 1e-12 and abs(float(stats.position_corr[1]) - corr) < 1e-12
    assert abs(float(stats.position_corr[0])) < 0.9
    assert torch.isnan(stats.position_corr[3]) and torch.isnan(stats.first_token_share[3])


def test_histogram_reports_under_and_overflow_only_when_used() -> None:
    rows = [Row(0, p, 1, {0: v, 1: 1.0, 2: 0.0, 3: 0.0}, [0.0] * D_IN)
            for p, v in enumerate([2.0**-15, 1.0, 1.5, 3.0 * 2**15])]  # fmt: skip
    cards = fed([[rows]], dense=False)
    edges, counts = cards.histogram(0)
    assert len(edges) == len(counts) + 1 == len(HIST_EDGES) + 2
    assert edges[0] == 0.0 and edges[-1] == 3.0 * 2**15 and sum(counts) == 4
    assert counts[0] == 1 and counts[-1] == 1
    edges, counts = cards.histogram(1)
    assert edges == list(HIST_EDGES) and sum(counts) == 4
    assert counts[bisect.bisect_right(HIST_EDGES, 1.0) - 1] == 4


def test_bad_batch_leaves_state_untouched() -> None:
    data = make_data(8, n_seq=4)
    cards = fed([data], dense=False)
    before = cards.state_dict()
    x, codes, seq, pos, tok = tensors(data, dense=False)
    with pytest.raises(ValueError, match="same"):
        cards.update(x, codes, seq, torch.zeros_like(pos), tok)
    with pytest.raises(ValueError, match="token_ids"):
        cards.update(x, codes, seq, pos, tok + (1 << 24))
    with pytest.raises(ValueError, match="x"):
        cards.update(x[:, :2], codes, seq, pos, tok)
    after = cards.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
