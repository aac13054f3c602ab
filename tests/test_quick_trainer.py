"""The quick TopK trainer learns real structure and keeps its invariants."""

from __future__ import annotations

import torch

from saedoctor.train.quick import QuickTrainConfig, train_topk_sae


def _planted_stream(n_batches: int, d: int = 32, n_atoms: int = 128, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_atoms, d, generator=gen)
    atoms /= atoms.norm(dim=1, keepdim=True)
    offset = torch.randn(d, generator=gen) * 3

    def stream():
        g = torch.Generator().manual_seed(seed + 1)
        for _ in range(n_batches):
            idx = torch.randint(0, n_atoms, (1024, 4), generator=g)
            vals = torch.rand(1024, 4, generator=g) * 2 + 0.5
            yield (vals[..., None] * atoms[idx]).sum(1) + offset

    return stream, offset


def test_trainer_reduces_fvu_keeps_unit_decoder_and_starts_bias_at_mean():
    stream, offset = _planted_stream(60)
    cfg = QuickTrainConfig(expansion_factor=8, k=4, batch_tokens=256, shuffle_tokens=4096)
    x = next(stream())
    untrained = train_topk_sae(iter([]), 32, cfg)
    with torch.no_grad():
        fvu0 = ((x - untrained(x)[0]) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    sae = train_topk_sae(stream(), 32, cfg)
    with torch.no_grad():
        fvu = ((x - sae(x)[0]) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert fvu < 0.35 < fvu0
    norms = sae.W_dec.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    assert sae.cfg.metadata["training_tokens"] == 60 * 1024
    # b_dec starts at the data mean and stays near the planted offset
    assert (sae.b_dec - offset).norm() < 0.5 * offset.norm()


def test_trainer_is_deterministic_for_a_seed():
    stream, _ = _planted_stream(8)
    cfg = QuickTrainConfig(expansion_factor=4, k=4, batch_tokens=256, shuffle_tokens=2048)
    a = train_topk_sae(stream(), 32, cfg)
    b = train_topk_sae(stream(), 32, cfg)
    assert torch.equal(a.W_enc, b.W_enc) and torch.equal(a.W_dec, b.W_dec)
