"""Merging two shards equals one pass; state_dict round-trips (the basis of resume)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load, save
from torch import nn

from saedoctor.metrics import MetricSuite
from saedoctor.sae.codes import Codes
from saedoctor.sae.model import SAE, SAEConfig

D_IN, D_SAE = 12, 40
Batch = tuple[torch.Tensor, torch.Tensor, Codes, torch.Tensor]


def make_sae(arch: str) -> SAE:
    torch.manual_seed(0)
    sae = SAE(SAEConfig(arch, D_IN, D_SAE, k=5 if arch == "topk" else None))
    with torch.no_grad():
        for p in (sae.W_enc, sae.W_dec):
            nn.init.normal_(p, std=0.3)
        nn.init.normal_(sae.b_enc, mean=-0.3, std=0.5)
        sae.b_enc[0] = 30.0
    return sae.requires_grad_(False)


SAES = {arch: make_sae(arch) for arch in ("topk", "relu")}


def stream(arch: str, sizes: list[int], seed: int, offset: float) -> list[Batch]:
    sae, g = SAES[arch], torch.Generator().manual_seed(seed)
    out = []
    for b, n in enumerate(sizes):
        x = torch.randn(n, D_IN, generator=g) + offset
        codes = sae.encode(x)
        seq = torch.arange(n) // 7 + 1000 * b
        out.append((x, sae.decode(codes), codes, seq))
    return out


def run(batches: list[Batch]) -> MetricSuite:
    suite = MetricSuite(D_IN, D_SAE)
    for b in batches:
        suite.update(*b)
    return suite


def assert_close(a: Any, b: Any, rel: float = 1e-9, path: str = "") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_close(a[k], b[k], rel, f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close(x, y, rel, f"{path}[{i}]")
    elif isinstance(a, float):
        assert math.isclose(a, b, rel_tol=rel, abs_tol=1e-12), (path, a, b)
    else:
        assert a == b, (path, a, b)  # ints, ids, strings, None: exact


@settings(max_examples=25, deadline=None)
@given(
    arch=st.sampled_from(["topk", "relu"]),
    sizes=st.lists(st.integers(1, 60), min_size=1, max_size=6),
    split=st.integers(0, 6),
    seed=st.integers(0, 2**16),
    offset=st.sampled_from([0.0, 5.0, 300.0]),
)
def test_merge_equals_one_pass(
    arch: str, sizes: list[int], split: int, seed: int, offset: float
) -> None:
    batches = stream(arch, sizes, seed, offset)
    split = min(split, len(batches))
    whole = run(batches)
    merged = run(batches[:split]).merge(run(batches[split:]))
    W_dec = SAES[arch].W_dec
    assert_close(merged.compute(W_dec), whole.compute(W_dec))
    for k, v in whole.state_dict().items():
        if v.dtype == torch.int64:
            assert torch.equal(merged.state_dict()[k], v), k


@settings(max_examples=10, deadline=None)
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=4), seed=st.integers(0, 999))
def test_state_dict_round_trip(sizes: list[int], seed: int) -> None:
    suite = run(stream("topk", sizes, seed, 2.0))
    state = suite.state_dict()
    assert all(v.dtype in (torch.float64, torch.int64) for v in state.values())
    restored = MetricSuite(D_IN, D_SAE)
    restored.load_state_dict(load(save(state)))  # through safetensors bytes
    assert_close(restored.compute(), suite.compute(), rel=0.0)
    # Resume: keep updating the restored copy and the original alike.
    more = stream("topk", [9, 17], seed + 1, 2.0)
    for b in more:
        suite.update(*b)
        restored.update(*b)
    assert_close(restored.compute(), suite.compute(), rel=0.0)


def test_load_rejects_other_config() -> None:
    state = run(stream("topk", [10], 0, 0.0)).state_dict()
    other = MetricSuite(D_IN, D_SAE, always_on_threshold=0.5)
    with pytest.raises(ValueError, match="always_on_threshold"):
        other.load_state_dict(state)
