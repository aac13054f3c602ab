"""Training on the embedded default (slow): two layers from one forward pass, SAELens loads it."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.slow
def test_two_layers_on_the_default_model_load_in_saelens(tmp_path) -> None:
    from saedoctor.train import TrainConfig, train

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
        from sae_lens import SAE as SAELensSAE

        theirs = SAELensSAE.load_from_disk(str(result.sae_paths[name]), device="cpu")
        x = torch.randn(16, 576) * 3 + ours.b_dec
        with torch.no_grad():
            expected = ours.decode(ours.encode(x))
            got = theirs.decode(theirs.encode(x))
        assert torch.allclose(got, expected, atol=1e-3, rtol=1e-3)
