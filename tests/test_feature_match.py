"""`saedoctor compare --features`: decoder-row matching of two dictionaries on planted cases
with known answers, against a float64 reference, and through the command line."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from helpers import random_sae, saved_sae
from typer.testing import CliRunner

from saedoctor.cli import app
from saedoctor.metrics import feature_match as fm
from saedoctor.metrics.feature_match import BEST_MATCH, HUNGARIAN, match_features
from saedoctor.sae.model import SAE
from saedoctor.sae.site import Site

pytestmark = pytest.mark.usefixtures("one_thread")


def unit(n: int, d: int, seed: int) -> torch.Tensor:
    rows = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return rows / rows.norm(dim=1, keepdim=True)


def permuted_with_noise(a: torch.Tensor, seed: int, noise: float = 0.05):
    """B row j = A row perm[j] + noise; A row i's partner is B row inv[i]."""
    perm = torch.randperm(len(a), generator=torch.Generator().manual_seed(seed))
    b = a[perm] + noise * unit(len(a), a.shape[1], seed + 1)
    return b, torch.argsort(perm).numpy()


def reference_cos(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Naive float64 cosines, one pair at a time."""
    a64, b64 = a.double().numpy(), b.double().numpy()
    out = np.empty((len(a64), len(b64)))
    for i, j in itertools.product(range(len(a64)), range(len(b64))):
        out[i, j] = a64[i] @ b64[j] / (np.linalg.norm(a64[i]) * np.linalg.norm(b64[j]))
    return out


@pytest.mark.parametrize("method", [HUNGARIAN, BEST_MATCH])
def test_a_noisy_permutation_is_recovered(method, monkeypatch) -> None:
    monkeypatch.setattr(fm, "BEST_MATCH_CHUNK_BYTES", 4 * 200 * 7)  # 7 rows a chunk
    a = unit(200, 64, seed=0)
    b, inv = permuted_with_noise(a, seed=1)
    m = match_features(a, b, method=method)
    assert m.method == method
    np.testing.assert_array_equal(m.pair_a, np.arange(200))
    np.testing.assert_array_equal(m.pair_b, inv)
    assert m.shared_fraction_a == m.shared_fraction_b == m.shared_fraction == 1.0
    assert len(m.a_only) == len(m.b_only) == 0
    assert 0.99 < m.pw_mcc <= 1.0


def test_replaced_rows_are_exactly_the_unmatched_ones() -> None:
    a = unit(150, 64, seed=2)
    replaced = np.array([3, 17, 40, 41, 99, 149])
    b = a.clone()
    b[replaced] = unit(len(replaced), 64, seed=3)
    m = match_features(a, b)
    np.testing.assert_array_equal(m.a_only, replaced)
    np.testing.assert_array_equal(m.b_only, replaced)
    assert m.n_shared == 150 - len(replaced)
    assert m.shared_fraction_a == pytest.approx(144 / 150)


def test_best_match_agrees_with_hungarian_where_the_mutual_best_is_unique(monkeypatch) -> None:
    """Half of B copies A's rows (noisy, permuted), half is new: both methods pair the copies
    alike, and best-match's PW-MCC bounds Hungarian's from above."""
    monkeypatch.setattr(fm, "BEST_MATCH_CHUNK_BYTES", 4 * 120 * 11)
    a = unit(120, 64, seed=4)
    b, inv = permuted_with_noise(a, seed=5, noise=0.1)
    fresh = np.arange(60, 120)
    b[torch.from_numpy(inv[fresh])] = unit(60, 64, seed=6)
    exact = match_features(a, b, method=HUNGARIAN)
    chunked = match_features(a, b, method=BEST_MATCH)
    shared = {(i, j) for i, j, s in zip(exact.pair_a, exact.pair_b, exact.shared, strict=True) if s}
    chunked_shared = {(i, j) for i, j, s in
                      zip(chunked.pair_a, chunked.pair_b, chunked.shared, strict=True) if s}
    assert shared == chunked_shared and len(shared) == 60
    np.testing.assert_array_equal(exact.a_only, chunked.a_only)
    np.testing.assert_array_equal(exact.a_only, fresh)
    assert chunked.pw_mcc >= exact.pw_mcc and not chunked.pw_mcc_exact and exact.pw_mcc_exact


def test_cosines_and_optimum_against_a_float64_reference() -> None:
    a, b = unit(7, 5, seed=7) * 3.0, unit(7, 5, seed=8) * 0.2  # norms must not matter
    ref = reference_cos(a, b)
    m = match_features(a, b, threshold=0.5)
    np.testing.assert_allclose(m.pair_cos, ref[m.pair_a, m.pair_b], atol=1e-6)
    np.testing.assert_allclose(m.best_cos_a, ref.max(axis=1), atol=1e-6)
    np.testing.assert_allclose(m.best_cos_b, ref.max(axis=0), atol=1e-6)
    best = max(sum(ref[i, p[i]] for i in range(7)) for p in itertools.permutations(range(7)))
    assert m.pw_mcc == pytest.approx(best / 7, abs=1e-6)
    assert m.n_shared == int((ref[m.pair_a, m.pair_b] >= 0.5).sum())


def test_rectangular_antipodal_and_zero_rows() -> None:
    a = unit(20, 32, seed=9)
    b = torch.cat([a, unit(10, 32, seed=10)])
    b[0] = -b[0]  # the opposite feature: signed cosine -1, no counterpart
    b[1] = 0.0  # no direction: cosine 0 with everything
    m = match_features(a, b)
    assert m.n_shared == 18
    assert m.shared_fraction_a == pytest.approx(18 / 20)
    assert m.shared_fraction_b == pytest.approx(18 / 30)
    assert m.shared_fraction == pytest.approx(36 / 50)
    np.testing.assert_array_equal(m.a_only, [0, 1])
    np.testing.assert_array_equal(m.b_only, [0, 1, *range(20, 30)])


def test_auto_takes_best_match_beyond_the_budget(monkeypatch) -> None:
    a = unit(30, 16, seed=11)
    assert match_features(a, a).method == HUNGARIAN
    monkeypatch.setattr(fm, "HUNGARIAN_MAX_BYTES", fm.hungarian_bytes(30, 30) - 1)
    m = match_features(a, a)
    assert m.method == BEST_MATCH and m.shared_fraction == 1.0


@pytest.mark.parametrize("args", [
    dict(W_dec_a=torch.zeros(3, 4), W_dec_b=torch.zeros(3, 5)),
    dict(W_dec_a=torch.zeros(0, 4), W_dec_b=torch.zeros(3, 4)),
    dict(W_dec_a=torch.zeros(3, 4), W_dec_b=torch.zeros(3, 4), threshold=0.0),
    dict(W_dec_a=torch.zeros(3, 4), W_dec_b=torch.zeros(3, 4), method="greedy"),
])  # fmt: skip
def test_bad_arguments_are_refused(args) -> None:
    with pytest.raises(ValueError):
        match_features(**args)


# -- the command line -----------------------------------------------------------------------
def permuted_sae(sae: SAE, perm: torch.Tensor, replace: list[int], seed: int) -> SAE:
    """B feature j = A feature perm[j] (encoder and decoder); the decoder rows of B's features
    that copy A's `replace` ids become random directions."""
    other = SAE(sae.cfg)
    with torch.no_grad():
        other.W_enc.copy_(sae.W_enc[:, perm])
        other.b_enc.copy_(sae.b_enc[perm])
        other.W_dec.copy_(sae.W_dec[perm])
        other.b_dec.copy_(sae.b_dec)
        inv = torch.argsort(perm)
        other.W_dec[inv[replace]] = unit(len(replace), sae.cfg.d_in, seed)
    return other


def compare(*args: str):
    return CliRunner().invoke(app, ["compare", *args])


def test_an_sae_compared_with_itself(tmp_path) -> None:
    path = str(saved_sae(tmp_path / "a", random_sae(64, 256, seed=1)))
    result = compare("--features", path, path, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["schema"] == "saedoctor.feature_match/1" and doc["method"] == HUNGARIAN
    assert doc["shared_fraction"] == 1.0 and doc["pw_mcc"] == pytest.approx(1.0, abs=1e-6)
    assert doc["summary"].startswith("B shares 100.0 % of A's features (cos ≥ 0.7); PW-MCC 1.000")


def test_cli_happy_path_writes_json_and_markdown(tmp_path) -> None:
    sae = random_sae(64, 256, seed=2)
    perm = torch.randperm(256, generator=torch.Generator().manual_seed(3))
    a = saved_sae(tmp_path / "a", sae)
    b = saved_sae(tmp_path / "b", permuted_sae(sae, perm, [5, 9], seed=4))
    out, md = tmp_path / "match.json", tmp_path / "match.md"
    result = compare("--features", str(a), str(b), "--out", str(out), "--md", str(md),
                     "--threshold", "0.8")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "B shares 99.2 % of A's features (cos ≥ 0.8)" in result.output.replace("\n", "")
    doc = json.loads(out.read_text())
    assert doc["n_shared"] == 254 and doc["a_only"] == [5, 9]
    assert doc["b_only"] == sorted(torch.argsort(perm)[[5, 9]].tolist())
    assert "| PW-MCC |" in md.read_text()


def test_always_on_and_dead_features_get_their_counterparts(tmp_path, tiny_llama_dir,
                                                            text_corpus) -> None:  # fmt: skip
    sae = random_sae(64, 128, site=Site(1), seed=5)
    with torch.no_grad():
        sae.b_enc[3] = 50.0  # always in the top k: always-on
        sae.b_enc[[5, 7]] = -50.0  # never: dead
    perm = torch.randperm(128, generator=torch.Generator().manual_seed(6))
    inv = torch.argsort(perm)
    a = saved_sae(tmp_path / "a", sae)
    b = saved_sae(tmp_path / "b", permuted_sae(sae, perm, [7], seed=7))
    report = tmp_path / "run.json"
    done = CliRunner().invoke(app, [
        "diagnose", "--quiet", "--model", str(tiny_llama_dir), "--corpus", str(text_corpus),
        "--tokens", "128", "--context", "32", "--no-downstream", "--sae", str(a), "--sae", str(b),
        "--out", str(report)])  # fmt: skip
    assert done.exit_code == 0, done.output
    result = compare("--features", str(a), str(b), "--report-a", str(report), "--report-b",
                     str(report), "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    flags = json.loads(result.output)["flags"]
    on_a = {c["id"]: c for c in flags["a"]["always_on"]}
    assert on_a[3]["partner"] == inv[3] and on_a[3]["partner_flag"] == "always_on"
    dead_a = {c["id"]: c for c in flags["a"]["dead"]}
    assert dead_a[5]["partner"] == inv[5] and dead_a[5]["partner_flag"] == "dead"
    assert dead_a[7]["partner"] is None  # its decoder row was replaced in B
    dead_b = {c["id"]: c for c in flags["b"]["dead"]}
    assert dead_b[int(inv[7])]["partner"] is None
    shown = compare("--features", str(a), str(b), "--report-a", str(report), "--report-b",
                    str(report))  # fmt: skip
    assert f"3→{int(inv[3])}" in shown.output
    elsewhere = saved_sae(tmp_path / "c", sae)  # not in the report: which entry is it?
    _bad(compare("--features", str(a), str(elsewhere), "--report-a", str(report), "--report-b",
                 str(report)), f"--report-b {report}", "2 SAE entries")  # fmt: skip


def _bad(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("saedoctor: error:"), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture()
def two(tmp_path) -> tuple[str, str]:
    a = saved_sae(tmp_path / "a", random_sae(64, 128, seed=8))
    return str(a), str(saved_sae(tmp_path / "narrow", random_sae(32, 128, seed=9)))


@pytest.mark.parametrize(("args", "needles"), [
    (["--features", "{a}", "{narrow}"], ["{narrow}", "d_in=32", "d_in=64"]),
    (["--features", "{a}"], ["--features", "expected two"]),
    (["--features", "{a}", "{missing}"], ["{missing}"]),
    (["--features", "{a}", "{a}", "--threshold", "1.5"], ["--threshold 1.5"]),
    (["--features", "{a}", "{a}", "--method", "greedy"], ["--method 'greedy'"]),
    (["--features", "{a}", "{a}", "--report-a", "{a}"], ["--report-a / --report-b"]),
    (["--features", "{a}", "{a}", "--report-a", "{missing}", "--report-b", "{missing}"],
     ["{missing}"]),
    (["--features", "{a}", "{a}", "--html", "x.html"], ["--html"]),
    (["{a}", "{a}", "--threshold", "0.5"], ["--threshold", "--features"]),
])  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(two, tmp_path, args, needles) -> None:
    names = {"a": two[0], "narrow": two[1], "missing": str(tmp_path / "nope")}
    out = tmp_path / "out.json"
    result = compare(*[arg.format(**names) for arg in args], "--out", str(out)) \
        if args[0] == "--features" else compare(*[arg.format(**names) for arg in args])
    _bad(result, *[n.format(**names) for n in needles])
    assert not out.exists() and not list(tmp_path.glob(".out.json*"))


def test_hungarian_over_the_budget_is_refused(two, monkeypatch) -> None:
    monkeypatch.setattr(fm, "HUNGARIAN_MAX_BYTES", 1024)
    _bad(compare("--features", two[0], two[0], "--method", "hungarian"), "--method hungarian")
    assert compare("--features", two[0], two[0], "--json").exit_code == 0  # auto: best-match
