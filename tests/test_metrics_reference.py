"""MetricSuite against a naive dense float64 reference written straight from SPEC §2."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from saedoctor.metrics import MetricSuite, decoder_absorption
from saedoctor.sae.codes import Codes
from saedoctor.sae.model import SAE, SAEConfig

THRESHOLDS = {"always_on_threshold": 0.8, "dense_threshold": 0.1, "dead_threshold": 0.0005}
Batch = tuple[torch.Tensor, torch.Tensor, Codes, torch.Tensor]


# -- the reference: obvious dense loops, float64 -------------------------------------------
def ref_features(F: torch.Tensor) -> dict[str, Any]:
    n, d_sae = F.shape
    fired = [sum(1 for t in range(n) if F[t, i] > 0) for i in range(d_sae)]
    density = [c / n for c in fired]
    on = [i for i in range(d_sae) if density[i] > THRESHOLDS["always_on_threshold"]]
    dead = [i for i in range(d_sae) if density[i] < THRESHOLDS["dead_threshold"]]
    pos_sum = torch.where(F > 0, F, 0.0).sum(0)
    return {
        "density": density,
        "always_on_features": sorted(on, key=lambda i: (-density[i], i)),
        "always_on_count": len(on),
        "dense_count": sum(d > THRESHOLDS["dense_threshold"] for d in density),
        "dead_count": len(dead),
        "dead_pct": 100.0 * len(dead) / d_sae,
        "never_fired_count": sum(c == 0 for c in fired),
        "tokens_seen": n,
        "l0": float((F != 0).sum()) / n,
        "mean_activation_when_active": [
            float(pos_sum[i]) / fired[i] if fired[i] else 0.0 for i in range(d_sae)
        ],
    }


def ref_diversity(F: torch.Tensor, seq: torch.Tensor, top: int = 10) -> float:
    per_seq = []
    for s in seq.unique().tolist():
        block = F[seq == s]
        entries = [
            (float(block[p, i]), i)
            for p in range(block.shape[0])
            for i in range(block.shape[1])
            if block[p, i] > 0
        ]
        entries.sort(key=lambda e: -e[0])
        per_seq.append(len({i for _, i in entries[:top]}))
    return sum(per_seq) / len(per_seq)


def ref_reconstruction(xs: list[torch.Tensor], hs: list[torch.Tensor]) -> dict[str, Any]:
    X, H = torch.cat(xs).double(), torch.cat(hs).double()
    n = X.shape[0]
    res = ((X - H) ** 2).sum(1)
    mean = X.mean(0)
    total = (X**2).sum() - n * (mean**2).sum()
    ve = 1 - res.sum() / total
    xn, hn = X.norm(dim=1), H.norm(dim=1)
    legacy = []
    for x, h in zip(xs, hs, strict=True):
        x, h = x.double(), h.double()
        legacy.append((1 - ((x - h) ** 2).sum(1) / ((x - x.mean(0)) ** 2).sum(1)).mean())
    return {
        "variance_explained": float(ve),
        "fvu": float(1 - ve),
        "variance_explained_legacy": float(torch.stack(legacy).mean()),
        "mse": float(res.mean()),
        "cossim": float(((X * H).sum(1) / (xn * hn)).mean()),
        "l2_ratio": float((hn / xn).mean()),
        "relative_reconstruction_bias": float((hn**2).mean() / (X * H).sum(1).mean()),
    }


def ref_absorption(W_dec: torch.Tensor, alive: torch.Tensor) -> float:
    W = W_dec[alive].double()
    W = W / W.norm(dim=1, keepdim=True)
    cos = W @ W.T
    cos.fill_diagonal_(-math.inf)
    return float(cos.max(dim=1).values.mean())


def reference(batches: list[Batch], W_dec: torch.Tensor | None = None) -> dict[str, Any]:
    F = torch.cat([c.dense() for _, _, c, _ in batches]).double()
    seq = torch.cat([s for *_, s in batches])
    out = ref_features(F)
    out["diversity_top10"] = ref_diversity(F, seq)
    out |= ref_reconstruction([b[0] for b in batches], [b[1] for b in batches])
    if W_dec is not None:
        alive = torch.tensor(out["density"]) >= THRESHOLDS["dead_threshold"]
        out["absorption"] = ref_absorption(W_dec, alive)
    return out


# -- helpers ---------------------------------------------------------------------------------
def random_sae(arch: str, d_in: int, d_sae: int, k: int | None = None, seed: int = 0) -> SAE:
    torch.manual_seed(seed)
    sae = SAE(SAEConfig(arch, d_in, d_sae, k=k))
    with torch.no_grad():
        nn.init.normal_(sae.W_dec)
        sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True)
        nn.init.kaiming_uniform_(sae.W_enc)
        nn.init.normal_(sae.b_enc, mean=-0.5, std=0.5)
        nn.init.normal_(sae.b_dec, std=0.1)
        sae.b_enc[:3] = 50.0  # always on
        sae.b_enc[3:6] = -50.0  # dead
        sae.W_dec[7] = sae.W_dec[8]  # a redundant pair
    return sae


def make_batches(sae: SAE, sizes: list[int], seed: int, offset: float = 3.0) -> list[Batch]:
    """Uneven batches of several sequences each; sequence ids are globally unique."""
    g = torch.Generator().manual_seed(seed)
    batches, next_seq = [], 0
    for n in sizes:
        x = torch.randn(n, sae.cfg.d_in, generator=g) + offset
        lengths = torch.randint(1, 13, (n,), generator=g).cumsum(0)
        seq = torch.searchsorted(lengths, torch.arange(n), right=True) + next_seq
        next_seq = int(seq.max()) + 1
        with torch.no_grad():
            codes = sae.encode(x)
            batches.append((x, sae.decode(codes), codes, seq))
    return batches


def run_suite(sae: SAE, batches: list[Batch]) -> MetricSuite:
    suite = MetricSuite(sae.cfg.d_in, sae.cfg.d_sae, **THRESHOLDS)
    for b in batches:
        suite.update(*b)
    return suite


def assert_matches(got: dict[str, Any], want: dict[str, Any], rel: float = 1e-6) -> None:
    for key, value in want.items():
        if isinstance(value, list) and key != "always_on_features":
            assert got[key] == pytest.approx(value, rel=rel, abs=1e-12), key
        elif isinstance(value, float):
            assert got[key] == pytest.approx(value, rel=rel, abs=1e-12), key
        else:
            assert got[key] == value, key


# -- comparisons -------------------------------------------------------------------------------
def test_topk_sae_sparse_codes_match_reference() -> None:
    sae = random_sae("topk", 24, 96, k=8, seed=1)
    batches = make_batches(sae, [37, 64, 5, 90], seed=2)
    assert batches[0][2].is_sparse
    got = run_suite(sae, batches).compute(W_dec=sae.W_dec.detach())
    assert_matches(got, reference(batches, sae.W_dec.detach()))
    assert got["always_on_features"][:3] == [0, 1, 2]  # density 1.0 ties, by id


def test_relu_sae_dense_codes_match_reference() -> None:
    sae = random_sae("relu", 20, 80, seed=3)
    batches = make_batches(sae, [50, 11, 73], seed=4)
    assert not batches[0][2].is_sparse
    got = run_suite(sae, batches).compute(W_dec=sae.W_dec.detach())
    assert_matches(got, reference(batches, sae.W_dec.detach()))
    assert got["never_fired_count"] >= 3


def test_sparse_and_dense_forms_agree() -> None:
    sae = random_sae("topk", 16, 64, k=6, seed=5)
    sparse = make_batches(sae, [40, 33], seed=6)
    dense = [(x, h, Codes(c.dense(), None, c.d_sae), s) for x, h, c, s in sparse]
    a, b = run_suite(sae, sparse).compute(), run_suite(sae, dense).compute()
    assert_matches(a, b, rel=1e-12)


def train_topk_sae(steps: int = 200) -> tuple[SAE, torch.Tensor]:
    """A topk SAE briefly trained on sparse combinations of 48 ground-truth directions."""
    torch.manual_seed(0)
    d_in, n_true = 16, 48
    truth = nn.functional.normalize(torch.randn(n_true, d_in), dim=1)
    bias = 4.0 * torch.randn(d_in)

    def sample(n: int) -> torch.Tensor:
        on = torch.rand(n, n_true) < 3 / n_true
        return (on * torch.rand(n, n_true) * 3) @ truth + bias

    sae = random_sae("topk", d_in, 64, k=4, seed=0)
    with torch.no_grad():
        sae.b_enc.zero_()
        sae.b_dec.copy_(bias)
        sae.W_enc.copy_(sae.W_dec.T)
    opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
    for _ in range(steps):
        x = sample(128)
        loss = ((sae(x)[0] - x) ** 2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return sae, sample(300)


def test_trained_sae_matches_reference() -> None:
    sae, x = train_topk_sae()
    sae.requires_grad_(False)
    sizes, batches, start = [70, 130, 100], [], 0
    for i, n in enumerate(sizes):
        xb = x[start : start + n]
        codes = sae.encode(xb)
        seq = torch.arange(n) // 25 + 100 * i
        batches.append((xb, sae.decode(codes), codes, seq))
        start += n
    got = run_suite(sae, batches).compute(W_dec=sae.W_dec)
    assert got["variance_explained"] > 0.5  # it learned something
    assert_matches(got, reference(batches, sae.W_dec))


# -- hand-built cases with known answers -----------------------------------------------------
def planted_relu_sae(j: int = 5, dead: int = 9) -> SAE:
    sae = SAE(SAEConfig("relu", 12, 24))
    with torch.no_grad():
        nn.init.uniform_(sae.W_enc, -0.05, 0.05)
        sae.b_enc.fill_(-0.05)
        sae.W_enc[:, j] = 0.0
        sae.b_enc[j] = 1000.0  # fires on every token, far above everything else
        sae.W_enc[:, dead] = 0.0
        sae.b_enc[dead] = -1.0  # can never fire
        nn.init.normal_(sae.W_dec)
    return sae


def test_planted_always_on_dead_and_dominant_feature() -> None:
    sae = planted_relu_sae()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 12, generator=g)
    codes = sae.encode(x)
    suite = MetricSuite(12, 24)
    suite.update(x, sae.decode(codes), codes, torch.arange(200) // 20)
    got = suite.compute()
    assert got["always_on_features"] == [5]
    assert got["density"][5] == 1.0 and got["density"][9] == 0.0
    assert got["never_fired_count"] >= 1 and got["dead_count"] >= 1
    assert got["diversity_top10"] == 1.0
    assert got["mean_activation_when_active"][5] == pytest.approx(1000.0)
    assert got["density_histogram"]["never_fired"] == got["never_fired_count"]


def test_perfect_reconstruction() -> None:
    x = torch.randn(64, 8) * 2 + 5
    codes = Codes(torch.rand(64, 3), torch.randint(0, 16, (64, 3)), 16)
    suite = MetricSuite(8, 16)
    suite.update(x[:30], x[:30], codes.select(slice(0, 30)), torch.zeros(30, dtype=torch.long))
    suite.update(x[30:], x[30:], codes.select(slice(30, None)), torch.ones(34, dtype=torch.long))
    got = suite.compute()
    assert got["variance_explained"] == 1.0 and got["mse"] == 0.0 and got["fvu"] == 0.0
    assert got["variance_explained_legacy"] == 1.0
    for key in ("cossim", "l2_ratio", "relative_reconstruction_bias"):
        assert got[key] == pytest.approx(1.0, abs=1e-12)


def test_large_mean_variance_explained_is_accurate() -> None:
    """A mean 1e6 times the spread: the literal Σ‖x‖² - N‖mean‖² would lose every digit."""
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(n, 4, generator=g, dtype=torch.float64) + 1e6 for n in (100, 57, 3)]
    hs = [x + 0.3 * torch.randn(x.shape, generator=g, dtype=torch.float64) for x in xs]
    suite = MetricSuite(4, 8)
    for x, h in zip(xs, hs, strict=True):
        codes = Codes(torch.zeros(x.shape[0], 1), torch.zeros(x.shape[0], 1, dtype=torch.long), 8)
        suite.update(x, h, codes, torch.arange(x.shape[0]))
    X, H = torch.cat(xs), torch.cat(hs)
    want = 1 - ((X - H) ** 2).sum() / ((X - X.mean(0)) ** 2).sum()  # centred two-pass
    assert suite.compute()["variance_explained"] == pytest.approx(float(want), rel=1e-10)


def test_absorption_known_answers() -> None:
    q, _ = torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64))
    alive = torch.ones(16, dtype=torch.bool)
    assert decoder_absorption(q, alive)["absorption"] == pytest.approx(0.0, abs=1e-12)
    dup = torch.cat([q[:8], 3.0 * q[:8]])
    assert decoder_absorption(dup, alive)["absorption"] == pytest.approx(1.0, abs=1e-12)
    # Signed, as SAEBench: an antipodal pair is -1, not 1.
    anti = torch.stack([q[0], -q[0]])
    assert decoder_absorption(anti, alive[:2])["absorption"] == pytest.approx(-1.0)
    few = decoder_absorption(q, torch.arange(16) == 3)
    assert few["absorption"] is None and "reason" in " ".join(few)


def test_absorption_chunked_equals_dense() -> None:
    g = torch.Generator().manual_seed(1)
    W = torch.randn(300, 24, generator=g)
    W[10] = W[200] + 1e-4 * torch.randn(24, generator=g)  # near-duplicate across chunks
    alive = torch.rand(300, generator=g) > 0.2
    got = decoder_absorption(W, alive, chunk_size=37)
    assert got["absorption_features"] == int(alive.sum())
    assert got["absorption_method"] == "decoder_cosine_exact_chunked"
    assert got["absorption"] == pytest.approx(ref_absorption(W, alive), rel=1e-9)


def test_merge_rejects_incompatible_suites() -> None:
    with pytest.raises(ValueError):
        MetricSuite(8, 16).merge(MetricSuite(8, 32))
    with pytest.raises(ValueError):
        MetricSuite(8, 16).merge(MetricSuite(8, 16, dead_threshold=1e-3))
    with pytest.raises(ValueError):
        MetricSuite(8, 16).compute()


def test_code_dtypes_and_empty_batches() -> None:
    """float64 codes take the two-sort diversity path; bf16 inputs are cast; empty is a no-op."""
    sae = random_sae("topk", 16, 64, k=6, seed=7)
    batches = make_batches(sae, [30, 41], seed=8)
    as64 = [(x, h, Codes(c.values.double(), c.indices, c.d_sae), s) for x, h, c, s in batches]
    assert_matches(run_suite(sae, as64).compute(), run_suite(sae, batches).compute(), rel=1e-12)
    suite = run_suite(sae, batches)
    empty = Codes(torch.zeros(0, 6), torch.zeros(0, 6, dtype=torch.long), 64)
    suite.update(torch.zeros(0, 16), torch.zeros(0, 16), empty, torch.zeros(0, dtype=torch.long))
    assert_matches(suite.compute(), run_suite(sae, batches).compute(), rel=0.0)
    half = [(x.bfloat16(), h.bfloat16(), c, s) for x, h, c, s in batches]
    want = ref_reconstruction([b[0].float() for b in half], [b[1].float() for b in half])
    assert_matches(run_suite(sae, half).compute(), want)


def test_silent_sequences_count_zero() -> None:
    codes = Codes(torch.zeros(20, 4), torch.zeros(20, 4, dtype=torch.long), 32)
    codes.values[:10, 0] = torch.arange(1.0, 11.0)  # sequence 0: one feature, 10 positions
    codes.indices[:10, 0] = 7
    x = torch.randn(20, 8)
    suite = MetricSuite(8, 32)
    suite.update(x, x * 0.9, codes, torch.arange(20) // 10)
    got = suite.compute()
    assert got["diversity_top10"] == 0.5 and got["sequences_seen"] == 2
    assert got["l0"] == 0.5 and got["density"][7] == 0.5


def test_bad_batch_leaves_state_untouched_and_histogram_adds_up() -> None:
    sae = random_sae("topk", 16, 64, k=6, seed=9)
    batches = make_batches(sae, [25], seed=10)
    suite = run_suite(sae, batches)
    x, h, codes, seq = batches[0]
    with pytest.raises(ValueError):
        suite.update(x, h, codes, seq[:-1])
    got = suite.compute()
    assert got == run_suite(sae, batches).compute()
    hist = got["density_histogram"]
    assert sum(hist["counts"]) + hist["never_fired"] == 64
    assert len(hist["edges"]) == len(hist["counts"]) + 1 and hist["edges"][0] == -8.0
