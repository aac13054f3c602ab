"""Training on the embedded default (slow): two layers from one forward pass, SAELens loads it."""

from __future__ import annotations

import pytest
import torch
from helpers import require_module


@pytest.mark.slow
def test_two_layers_on_the_default_model_load_in_saelens(tmp_path) -> None:
    from saedoctor.train import TrainConfig, train

    sae_lens = require_module("sae_lens")
    cfg = TrainConfig(layers=[4, 10], training_tokens=8192, shuffle_tokens=4096,
                      monitor_every=4, checkpoint_every=0)  # fmt: skip
    result = train(cfg, tmp_path / "run", quiet=True)
    assert result.steps == 8 and set(result.saes) == {"L4-resid_post-topk-x8-k32",
                                                      "L10-resid_post-topk-x8-k32"}  # fmt: skip
    for name, ours in result.saes.items():
        meta = ours.cfg.metadata
        assert meta["training_corpus"] == "python-docs@train" and meta["training_tokens"] == 8192
        assert meta["training_health"]["l0"] == pytest.approx(32, abs=1)
        assert meta["training_health"]["variance_explained"] > 0.2
        theirs = sae_lens.SAE.load_from_disk(str(result.sae_paths[name]), device="cpu")
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(16, 576, generator=gen) * 3 + ours.b_dec
        with torch.no_grad():
            codes = ours.encode(x)
            f = theirs.encode(x)
            # Both encode as relu(topk((x − b_dec) @ W_enc + b_enc)) with the same torch ops
            # on the same weights: the same codes, bit for bit, on any machine.
            assert torch.equal(f, codes.dense())
            got, expected = theirs.decode(f), ours.decode(codes)
            bound = _decode_rounding_bound(f, theirs.W_dec, theirs.b_dec, ours.cfg.k)
        assert bool(((got - expected).abs() <= bound).all())


def _decode_rounding_bound(f: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor,
                           k: int) -> torch.Tensor:  # fmt: skip
    """Elementwise bound on two float32 evaluations of f @ W_dec + b_dec in any summation
    order (a dense matmul; embedding_bag over the k active rows): zero terms are exact, so
    each is within γ_{k+1}·(|f| @ |W_dec| + |b_dec|) of the exact value, γ_n = n·u/(1 − n·u)
    (Higham, Accuracy and Stability of Numerical Algorithms, §3.1), u = 2⁻²⁴."""
    n_u = (k + 1) * 2.0**-24
    gamma = n_u / (1 - n_u)
    return 2 * gamma * (f.abs().double() @ W_dec.abs().double() + b_dec.abs().double())
