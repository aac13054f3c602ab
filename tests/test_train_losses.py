"""Each training loss term does what it claims, on planted data; export folds the input scale."""

from __future__ import annotations

import pytest
import torch

from saedoctor.sae.site import Site
from saedoctor.train.config import TrainConfig
from saedoctor.train.sae_trainer import TrainableSAE, geometric_median, lr_factor
from saedoctor.train.trainer import train_on_activations

pytestmark = pytest.mark.usefixtures("one_thread")


def planted(n: int = 40_000, d: int = 32, atoms: int = 128, active: int = 4, seed: int = 0,
            offset: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Sparse sums of `active` unit atoms plus `offset`·v on every token (v returned)."""
    g = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(atoms, d, generator=g)
    dictionary /= dictionary.norm(dim=1, keepdim=True)
    v = torch.randn(d, generator=g)
    v /= v.norm()
    idx = torch.randint(0, atoms, (n, active), generator=g)
    vals = torch.rand(n, active, generator=g) * 2 + 0.5
    scale = offset * (1 + 0.3 * torch.rand(n, 1, generator=g))
    return (vals[..., None] * dictionary[idx]).sum(1) + scale * v, v


def config(**changes) -> TrainConfig:
    base = dict(layers=[0], expansion_factor=4, top_k=4, batch_size=2, context=128,
                shuffle_tokens=8192, training_tokens=40_000, checkpoint_every=0,
                monitor_every=40)  # fmt: skip
    base.update(changes)
    return TrainConfig(**base).validate()


def trained(x: torch.Tensor, **changes):
    result = train_on_activations(config(**changes), x)
    (sae,) = result.saes.values()
    return sae, result.history[-1]


# -- mechanics --------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["topk", "batchtopk", "relu", "jumprelu"])
def test_export_folds_the_input_scale_exactly(arch: str) -> None:
    x, _ = planted(n=4096)
    cfg = config(architecture=arch, l1_penalty=1.0, sparsity_penalty=1.0)
    t = TrainableSAE("s", Site(0), cfg, 32, total_steps=10)
    t.initialise(x * 7.0)  # a scale far from 1
    with torch.no_grad():
        for p in t.params.values():
            p.add_(torch.randn_like(p) * 0.01)
        t.params["b_enc"].add_(0.3)
        if "threshold" in t.params:
            t.params["threshold"].abs_()
    out = t.micro_step(x[:512] * 7.0, step=0, scale_loss=1.0)
    if arch == "batchtopk":  # inference uses the running threshold, training the batch top-k
        return
    sae = t.export(None, {})
    with torch.no_grad():
        x_hat, codes = sae(x[:512] * 7.0)
    assert torch.allclose(x_hat, out.x_hat, rtol=1e-4, atol=1e-4)
    assert torch.allclose(codes.dense(), out.codes.dense(), rtol=1e-4, atol=1e-5)


def test_decoder_rows_stay_unit_norm_and_b_dec_starts_at_the_mean() -> None:
    x, _ = planted(n=8192)
    t = TrainableSAE("s", Site(0), config(), 32, total_steps=10)
    t.initialise(x)
    assert torch.allclose(t.params["b_dec"].double() / float(t.scale), x.double().mean(0),
                          atol=1e-4)  # fmt: skip
    for step in range(3):
        t.micro_step(x[step * 512 : (step + 1) * 512], step, 1.0)
        t.optimizer_step(step)
    norms = t.params["W_dec"].norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


def test_geometric_median_resists_outliers() -> None:
    x = torch.zeros(101, 3)
    x[:, 0] = torch.linspace(-1, 1, 101)
    x[:5] = 1000.0
    med = geometric_median(x)
    assert med.abs().max() < 0.2 and x.mean(0).abs().max() > 40


def test_learning_rate_warms_up_and_decays_to_zero() -> None:
    f = [lr_factor(s, 100, 10, 0.2) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == 1.0 and f[50] == 1.0
    assert f[80] == 1.0 and f[90] == pytest.approx(0.5) and f[99] == pytest.approx(0.05)


def test_every_architecture_learns_and_bf16_works() -> None:
    x, _ = planted()
    for arch, extra in (("topk", {}), ("batchtopk", {}), ("relu", {"l1_penalty": 2.0}),
                        ("jumprelu", {"sparsity_penalty": 1.0}),
                        ("topk", {"precision": "bf16"})):  # fmt: skip
        sae, last = trained(x, architecture=arch, **extra)
        assert last["variance_explained"] > 0.6, (arch, extra, last)
        assert all(torch.isfinite(t).all() for t in sae.weights().values())


# -- the loss terms ---------------------------------------------------------------------
def test_l1_penalty_lowers_l0() -> None:
    x, _ = planted()
    _, weak = trained(x, architecture="relu", l1_penalty=0.5)
    _, strong = trained(x, architecture="relu", l1_penalty=8.0)
    assert strong["l0"] < 0.6 * weak["l0"], (weak["l0"], strong["l0"])


def test_sparsity_penalty_lowers_jumprelu_l0() -> None:
    x, _ = planted()
    _, weak = trained(x, architecture="jumprelu", sparsity_penalty=0.002)
    _, strong = trained(x, architecture="jumprelu", sparsity_penalty=0.1)
    assert strong["l0"] < 0.6 * weak["l0"], (weak["l0"], strong["l0"])


def _revived(auxk_alpha: float) -> float:
    """Share of deliberately starved latents that fire again after training."""
    x, _ = planted(n=48_000, atoms=256)
    cfg = config(expansion_factor=8, auxk_alpha=auxk_alpha, dead_feature_threshold=1024)
    t = TrainableSAE("s", Site(0), cfg, 32, total_steps=180)
    t.initialise(x[:8192])
    starved = torch.arange(0, t.d_sae, 2)
    with torch.no_grad():  # tiny encoder columns: positive pre-acts that never make the top-k
        t.params["W_enc"][:, starved] *= 0.01
    fired = torch.zeros(t.d_sae, dtype=torch.bool)
    for step in range(180):
        out = t.micro_step(x[step * 256 : (step + 1) * 256], step, 1.0)
        t.optimizer_step(step)
        if step >= 150:
            fired[out.codes.indices[out.codes.values > 0]] = True
    return float(fired[starved].float().mean())


def test_auxk_revives_dead_latents() -> None:
    without, with_aux = _revived(0.0), _revived(1 / 32)
    assert without == 0.0
    assert with_aux > 0.05, with_aux


def test_orthogonality_penalty_lowers_max_decoder_cosine() -> None:
    from saedoctor.metrics.absorption import decoder_absorption

    x, _ = planted(atoms=64)

    def max_cos(sae) -> float:
        alive = torch.ones(sae.cfg.d_sae, dtype=torch.bool)
        return float(decoder_absorption(sae.W_dec, alive)["absorption"])

    plain, _ = trained(x, expansion_factor=4)
    ortho, last = trained(x, expansion_factor=4, decoder_orthogonality_weight=0.1)
    assert max_cos(ortho) < max_cos(plain) - 0.05, (max_cos(plain), max_cos(ortho))
    assert last["variance_explained"] > 0.5


def test_diversity_loss_keeps_a_planted_always_on_direction_out_of_the_latents() -> None:
    # Every token carries offset·v. With b_dec at zero a latent must carry it and fires on
    # every token; the diversity loss penalises that latent until the offset is spread
    # over latents that each fire on part of the tokens (or moves into b_dec).
    x, _ = planted(offset=3.0)
    kwargs = dict(b_dec_init="zeros", auxk_alpha=0.0, training_tokens=80_000)
    _, before = trained(x, **kwargs)
    _, after = trained(x, diversity_loss_weight=0.05, **kwargs)
    assert before["always_on_count"] >= 1
    assert after["always_on_count"] == 0
    assert after["variance_explained"] > before["variance_explained"] - 0.05
