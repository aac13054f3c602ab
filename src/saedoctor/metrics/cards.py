"""Feature cards: what every feature of one dictionary fires on, streamed in bounded memory.

Per feature: the `top` largest activations and `random` uniformly sampled firings, each with
its window of token ids and this feature's activations; a sketch of `token_sketch` firing
tokens (how concentrated the feature is on a few tokens); a log10 histogram of its activations
> 0; and the sums behind its correlation with position and its share of first-token firings.
Per site: the mean and covariance of the target on a fixed subsample of rows (its principal
components). Memory depends on `d_sae` and `d_in`, never on the token count.

Decisions:
* A feature *fires* where its activation is > 0; a code <= 0 counts as 0 everywhere here.
* Activations are kept as float32 (float64 codes are rounded); the sums use float64.
* Order and ties. Top contexts: activation descending, then (sequence, position) ascending.
  Random contexts: sketch key (below) ascending, then (sequence, position). Every list is kept
  sorted in its order and a batch's candidates are merged into it by counting, so the state is
  a pure function of the set of rows seen: any split into batches or shards, merged in any
  order, gives torch.equal selections. The float64 sums are equal up to rounding order.
* Hash (integer ops on torch int64, wrapping, splitmix64's finaliser `_mix`):
  row hash h = mix(mix(seq + G) + pos); a firing's priority = the top PRIORITY_BITS bits of
  mix(h + mix(feature + G)), G the golden-ratio constant. The k smallest priorities are a
  uniform sample without replacement of the feature's firings (a bottom-k sketch).
* Token sketch: each firing's key is (priority << TOKEN_BITS) | token id; the TOKEN_SKETCH
  smallest keys are kept, so the sketch is the bottom-k sample by the same priority and two
  equal keys are the same (priority, token): which of them is kept cannot differ.
* Window: the counted rows of the same sequence in position order (positions may skip), up to
  `before` rows before and `after` after the focus row, padded with token -1 / activation 0 at
  the sequence's edges. It is filled when an entry is inserted, from that batch's codes.
* First token: the first counted row of each sequence (the row with its smallest position),
  whatever its position number, so a corpus that leaves BOS uncounted still has first tokens.
* Position correlation: Pearson over every counted row, activation (0 where not firing)
  against the row's position.
* Moments: over the rows whose row hash h is 0 mod MOMENT_SAMPLE (1 row in 8), in float64;
  the covariance is the population one (divided by n).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch

from saedoctor.metrics._state import check_codes, export, follow_device, restore
from saedoctor.metrics.features import positive_entries
from saedoctor.sae.codes import Codes

CARD_TOP = 10  # top contexts per feature
CARD_RANDOM = 5  # random firing contexts per feature
WINDOW_BEFORE = 10  # counted rows before the focus row in a context's window
WINDOW_AFTER = 5  # counted rows after it
TOKEN_SKETCH = 64  # firing tokens kept per feature to measure token concentration
DEFAULT_CARDS = 64  # alive features sampled for cards per SAE
HIST_LOG10_MIN, HIST_LOG10_MAX, HIST_BINS = -4.0, 4.0, 48
# Bin edges of the activation histogram; below the first: underflow bin, from the last: overflow.
HIST_EDGES = tuple(
    10.0 ** (HIST_LOG10_MIN + i * (HIST_LOG10_MAX - HIST_LOG10_MIN) / HIST_BINS)
    for i in range(HIST_BINS + 1)
)
MOMENT_SAMPLE = 8  # one row in MOMENT_SAMPLE (by row hash) enters the target's moments
TOKEN_BITS = 24  # token ids must be below 2**24 to share an int64 key with a priority
PRIORITY_BITS = 38  # 38 + 24 bits: a sketch key stays below the empty marker
_EMPTY = torch.iinfo(torch.int64).max  # key of an empty slot: sorts after every entry
# Window activations from sparse codes: up to this many (cell, slot) pairs compare the k ids
# of each window row, beyond it a binary search in the batch's sorted (row, feature) keys.
_COMPARE_LIMIT = 1 << 21
_FIELDS = ("key", "val", "seq", "pos", "tok", "act")
_FILL = {"key": _EMPTY, "val": 0.0, "seq": -1, "pos": -1, "tok": -1, "act": 0.0}
_GROUPS = ("top", "rand")
# Counts and sums: a merge adds them.
_SUMS = ("hist", "fires", "first_fires", "act_sum", "act_sq_sum", "act_pos_sum", "tokens",
         "first_rows", "pos_sum", "pos_sq_sum", "x_sum", "xx_sum", "x_rows")  # fmt: skip
_STATE = (*(f"{g}_{f}" for g in _GROUPS for f in _FIELDS), "sketch", *_SUMS)


def _signed(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's `>>` is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def _mix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser: a bijection of 64-bit words that spreads every input bit."""
    x = (x ^ _shr(x, 30)) * _MIX1
    x = (x ^ _shr(x, 27)) * _MIX2
    return x ^ _shr(x, 31)


def row_hash(seq: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Deterministic int64 hash of (sequence id, position)."""
    return _mix(_mix(seq + _GOLDEN) + pos)


def firing_priority(rows: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """Priority in [0, 2**PRIORITY_BITS) of a firing, from its row hash and feature id."""
    return _priority(rows, _mix(feats + _GOLDEN))


def _priority(rows: torch.Tensor, salts: torch.Tensor) -> torch.Tensor:
    """`firing_priority` from each firing's feature salt mix(feature + G) (a per-feature
    table, so the hot path mixes once per firing instead of twice)."""
    return _shr(_mix(rows + salts), 64 - PRIORITY_BITS)


@dataclass(frozen=True)
class Context:
    """One firing with its window; `focus` is the focus row's index in the window."""

    sequence: int
    position: int
    activation: float
    token_ids: list[int]
    activations: list[float]
    focus: int


@dataclass(frozen=True)
class FeatureContexts:
    top: list[Context]  # activation descending
    random: list[Context]  # a uniform sample of the feature's firings


@dataclass(frozen=True)
class PositionStats:
    """Per feature, float64 `[d_sae]`; NaN where undefined (never fired, or no variance)."""

    position_corr: torch.Tensor
    first_token_share: torch.Tensor


@dataclass
class _Batch:
    """Per-row tensors of one batch on the state's device, and its (sequence, position) order."""

    codes: Codes
    seq: torch.Tensor
    pos: torch.Tensor
    tok: torch.Tensor
    order: torch.Tensor  # rows in (sequence, position) order
    rank: torch.Tensor  # each row's index in that order
    first: torch.Tensor  # bool: the first counted row of its sequence
    hash: torch.Tensor  # row_hash(seq, pos)

    @cached_property
    def lookup(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse codes as ascending keys row * (d_sae + 1) + feature and their float32
        values, to read activations by binary search (a value <= 0 gets the feature id d_sae,
        which no lookup asks for). Sorting each row's k indices is enough: rows ascend."""
        codes = self.codes
        assert codes.indices is not None
        d = codes.d_sae
        idx = torch.where(codes.values > 0, codes.indices.long(), d)
        idx, perm = idx.sort(dim=1)
        rows = torch.arange(codes.n_tokens, device=idx.device)[:, None]
        keys = (rows * (d + 1) + idx).reshape(-1)
        return keys, codes.values.gather(1, perm).float().reshape(-1)


@dataclass(frozen=True)
class _Firings:
    """A batch's activations > 0, in (sequence, position) order of their rows."""

    feats: torch.Tensor
    vals: torch.Tensor  # float32
    rows: torch.Tensor


@dataclass(frozen=True)
class _Runs:
    """Each touched feature's best candidates of one batch, in the kept lists' order."""

    feats: torch.Tensor  # [u] ascending
    key: torch.Tensor  # [u, c], _EMPTY pads
    val: torch.Tensor  # [u, c]
    row: torch.Tensor  # [u, c] batch rows, -1 pads

    def select(self, take: torch.Tensor, width: int) -> _Runs:
        """The features `take` picks, their first `width` candidates."""
        return _Runs(self.feats[take], self.key[take, :width], self.val[take, :width],
                     self.row[take, :width])  # fmt: skip


class FeatureCards:
    """Streaming, mergeable per-feature contexts, token sketch, histogram and position sums."""

    def __init__(
        self,
        d_sae: int,
        d_in: int,
        *,
        top: int = CARD_TOP,
        random: int = CARD_RANDOM,
        before: int = WINDOW_BEFORE,
        after: int = WINDOW_AFTER,
        token_sketch: int = TOKEN_SKETCH,
    ) -> None:
        if min(d_sae, d_in, top, random, token_sketch) <= 0 or min(before, after) < 0:
            raise ValueError(
                f"FeatureCards({d_sae}, {d_in}, top={top}, random={random}, before={before}, "
                f"after={after}, token_sketch={token_sketch}): sizes must be positive"
            )
        self.d_sae, self.d_in = d_sae, d_in
        self.top, self.random, self.token_sketch = top, random, token_sketch
        self.before, self.after = before, after
        for group, m in (("top", top), ("rand", random)):
            self._alloc_group(group, m)
        i64, f64 = torch.int64, torch.float64
        self.sketch = torch.full((d_sae, token_sketch), _EMPTY, dtype=i64)
        self.hist = torch.zeros(d_sae, HIST_BINS + 2, dtype=i64)
        self.fires = torch.zeros(d_sae, dtype=i64)
        self.first_fires = torch.zeros(d_sae, dtype=i64)
        self.act_sum = torch.zeros(d_sae, dtype=f64)
        self.act_sq_sum = torch.zeros(d_sae, dtype=f64)
        self.act_pos_sum = torch.zeros(d_sae, dtype=f64)
        self.tokens = torch.zeros((), dtype=i64)
        self.first_rows = torch.zeros((), dtype=i64)
        self.pos_sum = torch.zeros((), dtype=f64)  # float64: Σ pos² overflows int64 at scale
        self.pos_sq_sum = torch.zeros((), dtype=f64)
        self.x_sum = torch.zeros(d_in, dtype=f64)
        self.xx_sum = torch.zeros(d_in, d_in, dtype=f64)
        self.x_rows = torch.zeros((), dtype=i64)

    def _alloc_group(self, group: str, m: int) -> None:
        # Window token ids as int32 and activations as float32 halve the largest tensors.
        w = self.window
        dtypes = {"key": torch.int64, "val": torch.float32, "seq": torch.int64,
                  "pos": torch.int64, "tok": torch.int32, "act": torch.float32}  # fmt: skip
        for f in _FIELDS:
            shape = (self.d_sae, m, w) if f in ("tok", "act") else (self.d_sae, m)
            setattr(self, f"{group}_{f}", torch.full(shape, _FILL[f], dtype=dtypes[f]))

    @property
    def window(self) -> int:
        return self.before + 1 + self.after

    @property
    def config(self) -> tuple[int, ...]:
        return (self.d_sae, self.d_in, self.top, self.random, self.before, self.after,
                self.token_sketch)  # fmt: skip

    def _group(self, group: str) -> dict[str, torch.Tensor]:
        return {f: getattr(self, f"{group}_{f}") for f in _FIELDS}

    @torch.no_grad()
    def update(
        self,
        x: torch.Tensor,
        codes: Codes,
        seq_ids: torch.Tensor,
        positions: torch.Tensor,
        token_ids: torch.Tensor,
    ) -> None:
        """Fold one batch of counted rows of whole sequences: `x [n, d_in]` the target, per row
        its sequence id (>= 0), position in the sequence (>= 0) and token id (< 2**24)."""
        self._check(x, codes, seq_ids, positions, token_ids)
        dev = codes.values.device
        follow_device(self, _STATE, dev)
        batch = _batch(codes, seq_ids.to(dev), positions.to(dev), token_ids.to(dev))
        firings = _firings(codes, batch)
        self._update_sums(batch, firings)
        self._update_moments(x, batch)
        if firings.feats.numel():
            self._update_top(batch, firings)
            self._update_random(batch, firings)

    def _check(self, x: torch.Tensor, codes: Codes, seq_ids: torch.Tensor,
               positions: torch.Tensor, token_ids: torch.Tensor) -> None:  # fmt: skip
        # Every check before any state moves, so a bad batch leaves the state untouched.
        check_codes(codes, self.d_sae)
        n = codes.n_tokens
        if x.shape != (n, self.d_in):
            raise ValueError(f"x {tuple(x.shape)}: expected ({n}, {self.d_in})")
        bounds = {"seq_ids": (seq_ids, None), "positions": (positions, None),
                  "token_ids": (token_ids, 1 << TOKEN_BITS)}  # fmt: skip
        for name, (t, high) in bounds.items():
            if t.shape != (n,) or t.dtype.is_floating_point or t.dtype == torch.bool:
                raise ValueError(f"{name}: {t.dtype} {tuple(t.shape)}, expected integer ({n},)")
            if n and (int(t.min()) < 0 or (high is not None and int(t.max()) >= high)):
                raise ValueError(f"{name} outside [0, {high or 'inf'})")

    def _update_sums(self, b: _Batch, f: _Firings) -> None:
        """Histogram, firing counts and the position sums."""
        d, nb = self.d_sae, HIST_BINS + 2
        edges = torch.tensor(HIST_EDGES, dtype=torch.float64, device=f.vals.device)
        vals = f.vals.double()
        bins = torch.searchsorted(edges, vals, right=True)  # 0: underflow, HIST_BINS+1: over
        key = f.feats * nb + bins
        self.hist.view(-1).scatter_add_(0, key, torch.ones_like(key))
        self.fires += torch.bincount(f.feats, minlength=d)
        self.first_fires += torch.bincount(f.feats[b.first[f.rows]], minlength=d)
        pos = b.pos[f.rows].double()
        self.act_sum += torch.bincount(f.feats, weights=vals, minlength=d)
        self.act_sq_sum += torch.bincount(f.feats, weights=vals * vals, minlength=d)
        self.act_pos_sum += torch.bincount(f.feats, weights=vals * pos, minlength=d)
        row_pos = b.pos.double()
        self.tokens += b.seq.numel()
        self.first_rows += b.first.sum()
        self.pos_sum += row_pos.sum()
        self.pos_sq_sum += (row_pos * row_pos).sum()

    def _update_moments(self, x: torch.Tensor, b: _Batch) -> None:
        take = (b.hash & (MOMENT_SAMPLE - 1)) == 0
        xs = x[take.to(x.device)].to(self.x_sum.device, torch.float64)
        self.x_sum += xs.sum(0)
        self.xx_sum += xs.T @ xs
        self.x_rows += take.sum()

    def _update_top(self, b: _Batch, f: _Firings) -> None:
        key = _value_key(f.vals)
        # A firing whose key is past its kept list's last cannot enter: it is not sorted.
        keep = key <= self.top_key[:, -1][f.feats]
        feats = f.feats[keep]
        # One sort: the feature above the 31-bit key; the stable sort keeps row order on ties.
        perm = torch.sort((feats << 31) | key[keep], stable=True).indices
        runs = _runs(feats, key[keep], f.vals[keep], f.rows[keep], perm, self.top)
        if runs.feats.numel():
            self._insert("top", b, runs)

    def _update_random(self, b: _Batch, f: _Firings) -> None:
        salts = _mix(torch.arange(self.d_sae, device=f.feats.device) + _GOLDEN)
        prio = _priority(b.hash[f.rows], salts[f.feats])
        key = (prio << TOKEN_BITS) | b.tok[f.rows]
        limit = torch.maximum(self.rand_key[:, -1], self.sketch[:, -1])
        keep = key <= limit[f.feats]
        feats, key = f.feats[keep], key[keep]
        perm = torch.sort(key, stable=True).indices
        perm = perm[torch.sort(feats[perm], stable=True).indices]
        width = max(self.random, self.token_sketch)
        runs = _runs(feats, key, f.vals[keep], f.rows[keep], perm, width)
        if runs.feats.numel():
            self._insert("rand", b, runs)
            self._insert_sketch(runs)

    def _insert_sketch(self, runs: _Runs) -> None:
        s = self.token_sketch
        runs = runs.select(runs.key[:, 0] < self.sketch[runs.feats, -1], s)  # else no change
        merged = torch.cat([self.sketch[runs.feats], runs.key], 1)
        self.sketch[runs.feats] = torch.sort(merged, dim=1).values[:, :s]

    def _insert(self, group: str, b: _Batch, runs: _Runs) -> None:
        """Merge a batch's candidates into `group`'s kept lists; windows only for new entries."""
        kept = self._group(group)
        m = kept["key"].shape[1]
        cand = _candidates(b, runs)
        last = {f: kept[f][runs.feats, -1] for f in ("key", "seq", "pos")}
        enters = _precedes({f: cand[f][:, 0] for f in last}, last)  # else nothing changes
        runs = runs.select(enters, m)
        if runs.feats.numel() == 0:
            return
        cand = {f: t[enters, :m] for f, t in cand.items()}
        held = {f: t[runs.feats] for f, t in kept.items()}
        src = _merge_sources(held, cand, m)
        width = cand["key"].shape[1]
        for f in ("tok", "act"):  # windows of new entries are filled below
            cand[f] = torch.full_like(held[f][:, :1], _FILL[f]).expand(-1, width, -1)
        out = {f: _take(held[f], cand[f], src) for f in _FIELDS}
        rows = runs.row.gather(1, (src - m).clamp(0, width - 1))
        new = (src >= m) & (rows >= 0)
        out["tok"][new], out["act"][new] = self._windows(b, runs.feats[new.nonzero()[:, 0]],
                                                         rows[new])  # fmt: skip
        for f in _FIELDS:
            kept[f][runs.feats] = out[f]

    def _windows(self, b: _Batch, feats: torch.Tensor,
                 rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """`[e, window]` token ids (-1 off the sequence) and each feature's activations there."""
        n = b.seq.numel()
        offsets = torch.arange(-self.before, self.after + 1, device=rows.device)
        at = b.rank[rows][:, None] + offsets
        inside = (at >= 0) & (at < n)
        q = b.order[at.clamp(0, n - 1)]
        inside &= b.seq[q] == b.seq[rows][:, None]
        tok = torch.where(inside, b.tok[q], -1).to(torch.int32)
        act = torch.where(inside, _activation(b, q, feats), 0.0)
        return tok, act

    def merge(self, other: FeatureCards) -> FeatureCards:
        """Fold `other` (another shard) into this one, in place; returns self."""
        if other.config != self.config:
            raise ValueError(f"cannot merge FeatureCards {other.config} into {self.config}")
        dev = self.fires.device
        for group in _GROUPS:
            kept = self._group(group)
            theirs = {f: t.to(dev) for f, t in other._group(group).items()}
            last = {f: kept[f][:, -1] for f in ("key", "seq", "pos")}
            rows = _precedes({f: theirs[f][:, 0] for f in last}, last).nonzero().flatten()
            held = {f: t[rows] for f, t in kept.items()}
            cand = {f: t[rows] for f, t in theirs.items()}
            src = _merge_sources(held, cand, held["key"].shape[1])
            for f in _FIELDS:
                kept[f][rows] = _take(held[f], cand[f], src)
        merged = torch.cat([self.sketch, other.sketch.to(dev)], 1)
        self.sketch = torch.sort(merged, dim=1).values[:, : self.token_sketch]
        for name in _SUMS:
            setattr(self, name, getattr(self, name) + getattr(other, name).to(dev))
        return self

    def contexts(self, features: Sequence[int]) -> dict[int, FeatureContexts]:
        """Top and random contexts of each of `features`, padding stripped."""
        ids = torch.as_tensor(list(features), dtype=torch.int64)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.d_sae):
            raise ValueError(f"features outside [0, {self.d_sae})")
        dev = self.fires.device
        top, rand = ({f: t[ids.to(dev)].cpu() for f, t in self._group(g).items()}
                     for g in _GROUPS)  # fmt: skip
        return {
            feat: FeatureContexts(self._context_list(top, i), self._context_list(rand, i))
            for i, feat in enumerate(ids.tolist())
        }

    def _context_list(self, kept: dict[str, torch.Tensor], i: int) -> list[Context]:
        out = []
        for j in range(kept["seq"].shape[1]):
            if int(kept["seq"][i, j]) < 0:
                break  # lists are filled from the front
            real = kept["tok"][i, j] >= 0
            out.append(Context(int(kept["seq"][i, j]), int(kept["pos"][i, j]),
                               float(kept["val"][i, j]), kept["tok"][i, j][real].tolist(),
                               kept["act"][i, j][real].tolist(),
                               int(real[: self.before].sum())))  # fmt: skip
        return out

    def histogram(self, feature: int) -> tuple[list[float], list[int]]:
        """(edges, counts) of the feature's activations > 0, len(edges) = len(counts) + 1.

        The underflow bin [0, 1e-4) and the overflow bin [1e4, max activation] are left out
        when empty; the overflow's upper edge is the feature's largest activation."""
        counts = self.hist[feature].tolist()
        edges = [0.0, *HIST_EDGES, float(self.top_val[feature, 0])]
        if counts[-1] == 0:
            counts, edges = counts[:-1], edges[:-1]
        if counts[0] == 0:
            counts, edges = counts[1:], edges[1:]
        return edges, counts

    def position_stats(self) -> PositionStats:
        n = int(self.tokens)
        sa, saa, sap = (t.cpu() for t in (self.act_sum, self.act_sq_sum, self.act_pos_sum))
        sp, spp = float(self.pos_sum), float(self.pos_sq_sum)
        cov = n * sap - sa * sp
        var = (n * saa - sa * sa).clamp(min=0) * max(n * spp - sp * sp, 0.0)
        corr = torch.where(var > 0, cov / var.sqrt(), torch.nan).clamp(-1.0, 1.0)
        fires = self.fires.cpu().double()
        share = torch.where(fires > 0, self.first_fires.cpu().double() / fires, torch.nan)
        return PositionStats(corr, share)

    def token_concentration(self, top: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
        """Per feature: the share of its token sketch taken by its `top` most frequent tokens
        (float64, NaN where the sketch is empty) and the sketch's size (int64)."""
        keys = self.sketch.cpu()
        real = keys != _EMPTY
        size = real.sum(1)
        row = torch.arange(self.d_sae)[:, None].expand_as(keys)[real]
        tok = keys[real] & ((1 << TOKEN_BITS) - 1)
        pairs, count = torch.unique(row * (1 << TOKEN_BITS) + tok, return_counts=True)
        row = pairs >> TOKEN_BITS
        order = torch.sort(-count, stable=True).indices
        order = order[torch.sort(row[order], stable=True).indices]
        row, count = row[order], count[order]
        runs = torch.bincount(row, minlength=self.d_sae)
        rank = torch.arange(row.numel()) - (runs.cumsum(0) - runs)[row]
        best = torch.bincount(row[rank < top], weights=count[rank < top].double(),
                              minlength=self.d_sae)  # fmt: skip
        share = torch.where(size > 0, best / size.clamp(min=1).double(), torch.nan)
        return share, size

    def moments(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Mean `[d_in]` and covariance `[d_in, d_in]` (float64) of the sampled rows, their n."""
        n = int(self.x_rows)
        if n == 0:
            raise ValueError("no sampled row seen: the target's moments are undefined")
        mean = self.x_sum.cpu() / n
        return mean, self.xx_sum.cpu() / n - torch.outer(mean, mean), n

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        return export(self, _STATE, prefix)

    def load_state_dict(self, d: dict[str, torch.Tensor], prefix: str = "") -> None:
        restore(self, _STATE, prefix, d)


def _batch(codes: Codes, seq: torch.Tensor, pos: torch.Tensor, tok: torch.Tensor) -> _Batch:
    seq, pos, tok = seq.long(), pos.long(), tok.long()
    n = seq.numel()
    by_pos = torch.sort(pos, stable=True).indices
    order = by_pos[torch.sort(seq[by_pos], stable=True).indices]
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n, device=seq.device)
    s_seq, s_pos = seq[order], pos[order]
    starts = torch.ones(n, dtype=torch.bool, device=seq.device)
    starts[1:] = s_seq[1:] != s_seq[:-1]
    if bool((~starts[1:] & (s_pos[1:] == s_pos[:-1])).any()):
        raise ValueError("two rows with the same (sequence, position)")
    first = torch.empty_like(starts)
    first[order] = starts
    return _Batch(codes, seq, pos, tok, order, rank, first, row_hash(seq, pos))


def _firings(codes: Codes, b: _Batch) -> _Firings:
    e = positive_entries(codes)
    rows = e.per_entry(torch.arange(codes.n_tokens, device=codes.values.device))
    feats, vals = e.feats.long(), e.vals.float()
    # The stable sorts that select candidates break ties by entry order: make it the rows'
    # (sequence, position) order. Entries come row-major, so rows in order need no sort.
    if not bool((b.rank[1:] > b.rank[:-1]).all()):
        p = torch.sort(b.rank[rows], stable=True).indices
        feats, vals, rows = feats[p], vals[p], rows[p]
    return _Firings(feats, vals, rows)


def _value_key(vals: torch.Tensor) -> torch.Tensor:
    """31-bit int64 key ascending as a positive float32 descends (its bits are monotone)."""
    return (1 << 31) - 1 - vals.view(torch.int32).long()


def _runs(feats: torch.Tensor, key: torch.Tensor, vals: torch.Tensor, rows: torch.Tensor,
          perm: torch.Tensor, m: int) -> _Runs:  # fmt: skip
    """Each feature's first `m` firings in `perm` (ordered by feature, then list order) as
    `[u, c]` buffers, c <= m the most any feature has: rank within feature, scatter."""
    dev = key.device
    uniq, counts = torch.unique_consecutive(feats[perm], return_counts=True)
    width = min(m, int(counts.max())) if counts.numel() else 0
    local = torch.repeat_interleave(torch.arange(uniq.numel(), device=dev), counts)
    rank = torch.arange(perm.numel(), device=dev) - (counts.cumsum(0) - counts)[local]
    sel = rank < width
    at, perm = (local * width + rank)[sel], perm[sel]
    size = uniq.numel() * width
    out_key = torch.full((size,), _EMPTY, dtype=torch.int64, device=dev)
    out_val = torch.zeros(size, dtype=torch.float32, device=dev)
    out_row = torch.full((size,), -1, dtype=torch.int64, device=dev)
    out_key[at], out_val[at], out_row[at] = key[perm], vals[perm], rows[perm]
    shape = (uniq.numel(), width)
    return _Runs(uniq, out_key.view(shape), out_val.view(shape), out_row.view(shape))


def _candidates(b: _Batch, runs: _Runs) -> dict[str, torch.Tensor]:
    pad = runs.row < 0
    rows = runs.row.clamp(min=0)
    return {"key": runs.key, "val": runs.val, "seq": b.seq[rows].masked_fill(pad, -1),
            "pos": b.pos[rows].masked_fill(pad, -1)}  # fmt: skip


def _precedes(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
    """a < b in the kept lists' order: (key, sequence, position), elementwise (broadcast)."""
    ka, kb, sa, sb = a["key"], b["key"], a["seq"], b["seq"]
    return (ka < kb) | ((ka == kb) & ((sa < sb) | ((sa == sb) & (a["pos"] < b["pos"]))))


def _merge_sources(held: dict[str, torch.Tensor], cand: dict[str, torch.Tensor],
                   m: int) -> torch.Tensor:  # fmt: skip
    """`[u, m]` index into cat(held, cand) of the merge's first m slots. Both lists are sorted,
    so a slot's merged place is its index plus how many of the other list's entries precede
    it (held first on a tie, which only empty slots can have)."""
    keys = ("key", "seq", "pos")
    c = {f: cand[f][:, None, :] for f in keys}
    c_first = _precedes(c, {f: held[f][:, :, None] for f in keys})  # [u, mh, mc]
    mh, mc = c_first.shape[1:]
    dev = c_first.device
    at_h = torch.arange(mh, device=dev) + c_first.sum(2)
    at_c = torch.arange(mc, device=dev) + (~c_first).sum(1)
    at = torch.cat([at_h, at_c], 1)
    src = torch.empty_like(at)
    src.scatter_(1, at, torch.arange(mh + mc, device=dev).expand_as(at))
    return src[:, :m]


def _take(held: torch.Tensor, cand: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Slots `src` of cat(held, cand) along dim 1 (extra trailing dims carried along)."""
    both = torch.cat([held, cand], 1)
    idx = src.clamp(0, both.shape[1] - 1)
    idx = idx.view(*idx.shape, *([1] * (both.dim() - 2))).expand(-1, -1, *both.shape[2:])
    return both.gather(1, idx)


def _activation(b: _Batch, q: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """float32 `[e, w]` activation (0 where <= 0) of feature `feats[i]` on rows `q[i]`, read
    from the codes without a dense `[n, d_sae]` copy."""
    codes = b.codes
    if codes.indices is None:
        return codes.values[q, feats[:, None]].float().clamp(min=0)
    if q.numel() * codes.values.shape[1] <= _COMPARE_LIMIT:  # few windows: compare the k ids
        vals = codes.values[q].float()
        hit = (codes.indices[q] == feats[:, None, None]) & (vals > 0)
        return torch.where(hit, vals, 0.0).sum(-1)
    keys, vals = b.lookup  # many (the first batches): binary search
    want = q * (codes.d_sae + 1) + feats[:, None]
    at = torch.searchsorted(keys, want).clamp(max=keys.numel() - 1)
    return torch.where(keys[at] == want, vals[at], 0.0)
