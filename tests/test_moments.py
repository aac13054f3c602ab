"""The pool moments the trainer and the outlier check share, against naive float64."""

from __future__ import annotations

import math

import pytest
import torch

from saedoctor.activations.moments import CHUNK_ELEMENTS, LazyMoments, moments
from saedoctor.activations.outliers import outlier_severity


@pytest.mark.parametrize("offset", [0.0, 40.0])  # γ far above 1: the cancellation case
def test_moments_equal_naive_float64(offset: float) -> None:
    gen = torch.Generator().manual_seed(0)
    rows = CHUNK_ELEMENTS // 48 * 3 + 7  # several chunks and a ragged last one
    x = torch.randn(rows, 48, generator=gen) * 0.5 + offset * torch.randn(48, generator=gen)
    m = moments(x)
    x64 = x.double()
    mean = x64.mean(0)
    variance = float((x64 - mean).pow(2).sum(1).mean())
    assert m.rows == rows
    torch.testing.assert_close(m.mean, mean, rtol=0, atol=1e-12)
    assert m.total_variance == pytest.approx(variance, rel=1e-9)
    gamma = float(mean.norm()) / variance**0.5
    assert outlier_severity(x).gamma == pytest.approx(gamma, rel=1e-9)


def test_lazy_moments_compute_each_block_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import saedoctor.activations.moments as module

    calls = []
    real = module.moments
    monkeypatch.setattr(module, "moments", lambda x: calls.append(x.shape) or real(x))
    blocks = {"a": torch.ones(4, 3), "b": torch.zeros(5, 2)}
    stats = LazyMoments(blocks)
    assert stats["a"] is stats["a"] and stats["b"].rows == 5
    assert calls == [(4, 3), (5, 2)]


def test_too_few_rows_or_no_variance_give_nan_gamma() -> None:
    assert math.isnan(outlier_severity(torch.ones(1, 4)).gamma)
    assert math.isnan(outlier_severity(torch.ones(6, 4)).gamma)
