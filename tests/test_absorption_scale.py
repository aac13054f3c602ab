"""Decoder-cosine absorption at scale: chunked = naive, memory-budgeted chunks, sampled CI."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import require_module

from saedoctor.metrics.absorption import (
    METHOD,
    METHOD_SAMPLED,
    chunk_rows,
    decoder_absorption,
    mean_ci95,
    t_quantile_975,
)


def _naive_best(W_dec: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    rows = F.normalize(W_dec[alive].double(), dim=1)
    sims = rows @ rows.T
    sims.fill_diagonal_(float("-inf"))
    return sims.max(dim=1).values


def _decoder(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """Random rows with a few near-duplicates (absorbed pairs) and uneven norms."""
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(n, d, generator=gen) * torch.rand(n, 1, generator=gen).add(0.1)
    q = n // 8
    W[:q] = W[q : 2 * q] + 0.3 * torch.randn(q, d, generator=gen)
    return W


@pytest.mark.parametrize("chunk", [1, 7, 64, None])
def test_chunked_equals_naive(chunk):
    W = _decoder(300, 32)
    alive = torch.rand(300, generator=torch.Generator().manual_seed(1)) > 0.1
    got = decoder_absorption(W, alive, chunk)
    want = float(_naive_best(W, alive).mean())
    assert got["absorption_method"] == METHOD
    assert got["absorption_features"] == int(alive.sum())
    assert got["absorption"] == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_tiny_memory_budget_still_exact():
    W, alive = _decoder(200, 16), torch.ones(200, dtype=torch.bool)
    assert chunk_rows(200, 16, memory_mb=0.001) == 1
    got = decoder_absorption(W, alive, memory_mb=0.001)["absorption"]
    assert got == pytest.approx(float(_naive_best(W, alive).mean()), rel=1e-12)


def test_chunk_rows_fits_the_budget():
    rows = chunk_rows(65_536, 8_192, memory_mb=256)
    per_row = 4 * 65_536 + 32 * 8_192
    assert rows * per_row <= 256 * 2**20 < (rows + 1) * per_row


def test_sampled_ci_covers_the_exact_value():
    W = _decoder(4096, 64, seed=2)
    alive = torch.ones(4096, dtype=torch.bool)
    exact = decoder_absorption(W, alive)["absorption"]
    covered = 0
    for seed in range(20):
        got = decoder_absorption(W, alive, sample=400, seed=seed)
        low, high = got["absorption_ci95"]
        assert got["absorption_method"] == METHOD_SAMPLED and got["absorption_sampled"] == 400
        assert low < got["absorption"] < high
        assert high - low < 0.05  # 400 of 4096 features pin the mean down well
        covered += low <= exact <= high
    assert covered >= 17  # 95 % nominal coverage; 17 of 20 fails with probability < 8 %


def test_sample_values_are_exact_maxima():
    W, alive = _decoder(500, 24, seed=3), torch.ones(500, dtype=torch.bool)
    got = decoder_absorption(W, alive, sample=499, seed=0)
    picked = torch.randperm(500, generator=torch.Generator().manual_seed(0))[:499]
    want = float(_naive_best(W, alive)[picked].mean())
    assert got["absorption"] == pytest.approx(want, rel=1e-12)
    # A sample as large as the population is the exact computation.
    assert decoder_absorption(W, alive, sample=500)["absorption_method"] == METHOD


def test_the_seed_draws_the_sample():
    W, alive = _decoder(300, 16), torch.ones(300, dtype=torch.bool)
    picked = torch.randperm(300, generator=torch.Generator().manual_seed(4))[:50]
    got = decoder_absorption(W, alive, sample=50, seed=4)
    assert got["absorption"] == pytest.approx(float(_naive_best(W, alive)[picked].mean()),
                                              rel=1e-12)  # fmt: skip
    assert decoder_absorption(W, alive, sample=50, seed=5)["absorption"] != got["absorption"]
    assert decoder_absorption(W, alive)["absorption_method"] == METHOD


def test_ci_matches_scipy_t_interval():
    scipy_stats = require_module("scipy.stats")
    for dof in (1, 2, 3, 5, 10, 40, 400):
        assert t_quantile_975(dof) == pytest.approx(scipy_stats.t.ppf(0.975, dof), rel=2e-3)
    values = torch.tensor([0.2, 0.25, 0.4, 0.31, 0.22, 0.28])
    mean, low, high = mean_ci95(values)
    want = scipy_stats.t.interval(0.95, 5, loc=values.double().mean(),
                                  scale=values.double().std() / 6**0.5)  # fmt: skip
    assert (low, high) == pytest.approx(want, rel=1e-3)
    assert mean == pytest.approx(0.2766666, rel=1e-6)


def test_bad_sample_size_fails():
    with pytest.raises(ValueError, match="sample=1"):
        decoder_absorption(torch.randn(10, 4), torch.ones(10, dtype=torch.bool), sample=1)


def _activations_and_sae(tmp_path):
    from helpers import random_sae, saved_sae
    from safetensors.torch import save_file

    save_file({"x": torch.randn(512, 32)}, str(tmp_path / "a.safetensors"))
    sae = saved_sae(tmp_path / "s", random_sae(32, 512, architecture="relu"))
    return str(tmp_path / "a.safetensors"), str(sae)


def test_cli_absorption_sample_reports_a_ci(tmp_path):
    from typer.testing import CliRunner

    from saedoctor.cli import app

    acts, sae = _activations_and_sae(tmp_path)
    args = ["diagnose", "--activations", acts, "--sae", sae, "--out", str(tmp_path / "r.json"),
            "--quiet", "--absorption-sample"]  # fmt: skip
    done = CliRunner().invoke(app, [*args, "64"])
    assert done.exit_code == 0, done.output
    document = json.loads((tmp_path / "r.json").read_text())
    metrics = document["saes"][0]["metrics"]
    assert metrics["absorption_method"] == METHOD_SAMPLED and metrics["absorption_sampled"] == 64
    low, high = metrics["absorption_ci95"]
    assert low < metrics["absorption"] < high
    assert document["run"]["options"]["absorption_sample"] == 64
    bad = CliRunner().invoke(app, [*args, "1"])
    assert bad.exit_code == 2 and "--absorption-sample" in bad.output


def test_python_api_absorption_sample_equals_the_direct_computation(tmp_path):
    import saedoctor
    from saedoctor.errors import InputError
    from saedoctor.sae.loaders import load_sae

    acts, sae = _activations_and_sae(tmp_path)
    document = saedoctor.diagnose(activations=acts, saes=[sae], quiet=True, absorption_sample=64,
                                  seed=3)  # fmt: skip
    metrics = document["saes"][0]["metrics"]
    alive = torch.tensor(document["saes"][0]["feature_density"]) >= 0.0005  # dead: < 0.05 %
    want = decoder_absorption(load_sae(sae).W_dec.detach(), alive, sample=64, seed=3)
    assert metrics["absorption_sampled"] == 64
    assert metrics["absorption"] == pytest.approx(want["absorption"], rel=1e-12)
    with pytest.raises(InputError, match="--absorption-sample"):
        saedoctor.diagnose(activations=acts, saes=[sae], quiet=True, absorption_sample=1)
