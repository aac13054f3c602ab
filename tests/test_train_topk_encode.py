"""The TopK training step's sparse backward computes what the naive dense step computes."""

from __future__ import annotations

import math

import pytest
import torch

from saedoctor.sae.site import Site
from saedoctor.train.config import TrainConfig
from saedoctor.train.sae_trainer import TrainableSAE
from saedoctor.train.topk_encode import topk_encode

D_IN, K, N = 32, 8, 96


def _data(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(N * 4, D_IN, generator=gen) * 2 + torch.randn(D_IN, generator=gen) * 3


def _naive_codes(xs, b_dec, w_enc, b_enc, k):  # the dense autograd formulation, float64
    pre = (xs - b_dec if b_dec is not None else xs) @ w_enc + b_enc
    top = pre.topk(k, dim=-1, sorted=False)
    return torch.relu(top.values), top.indices, pre


@pytest.mark.parametrize("centre", [True, False])
@pytest.mark.parametrize("dense_term", [False, True])
def test_topk_encode_gradients_equal_dense_float64(centre: bool, dense_term: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    d_sae = 8 * D_IN
    xs = torch.randn(N, D_IN, generator=gen)
    params64 = {"W_enc": torch.randn(D_IN, d_sae, generator=gen).double() / 4,
                "b_enc": torch.randn(d_sae, generator=gen).double() / 4,
                "b_dec": torch.randn(D_IN, generator=gen).double()}  # fmt: skip
    weights = torch.randn(N, K, generator=gen).double()  # a loss weighting every code
    pre_weights = torch.randn(N, d_sae, generator=gen).double()
    grads = {}
    for name, dtype in (("fast", torch.float32), ("naive", torch.float64)):
        p = {k: v.to(dtype).requires_grad_(True) for k, v in params64.items()}
        b_dec = p["b_dec"] if centre else None
        fn = topk_encode if name == "fast" else _naive_codes
        vals, idx, pre = fn(xs.to(dtype), b_dec, p["W_enc"], p["b_enc"], K)
        order = idx.argsort(-1)  # codes compared latent by latent, whatever their order
        loss = (vals.gather(1, order) * weights.to(dtype)).sum()
        if dense_term:  # a term on the dense pre-activations (as AuxK's)
            loss = loss + (pre * pre_weights.to(dtype)).sum() / d_sae
        loss.backward()
        grads[name] = {k: (v.grad if v.grad is not None else torch.zeros_like(v)).double()
                       for k, v in p.items()}  # fmt: skip
        grads[name]["idx"] = idx.gather(1, order)
    assert torch.equal(grads["fast"].pop("idx"), grads["naive"].pop("idx"))
    for key, ref in grads["naive"].items():
        torch.testing.assert_close(grads["fast"][key], ref, rtol=1e-5, atol=1e-5, msg=key)
    if not centre:
        assert grads["fast"]["b_dec"].abs().max() == 0


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(layers=[0], training_tokens=N * 4, expansion_factor=8, top_k=K,
                       batch_size=1, context=N, lr_warmup_steps=0, checkpoint_every=0,
                       **kw)  # fmt: skip


def test_training_step_equals_naive_float64_step() -> None:
    """One micro-step + optimizer step of the optimised TopK path against the textbook step in
    float64: dense codes, dense decoder, autograd everywhere, torch's Adam, the same tangent
    projection and renormalisation of the decoder rows."""
    acts = _data()
    sae = TrainableSAE("s", Site(0), _cfg(), D_IN, total_steps=4)
    sae.initialise(acts)
    ref = {k: v.detach().double().clone().requires_grad_(True) for k, v in sae.params.items()}
    x = acts[:N]
    out = sae.micro_step(x, 0, 1.0)
    lr = sae.optimizer_step(0)

    xs = x.double() * float(sae.scale)
    vals, idx, _ = _naive_codes(xs, ref["b_dec"], ref["W_enc"], ref["b_enc"], K)
    codes = torch.zeros(N, sae.d_sae, dtype=torch.float64).scatter(1, idx, vals)
    x_hat = codes @ ref["W_dec"] + ref["b_dec"]
    mse = (xs - x_hat).pow(2).sum(-1).mean() / D_IN
    assert math.isclose(out.losses["mse"], float(mse.detach()), rel_tol=1e-5)
    mse.backward()
    w = ref["W_dec"]
    with torch.no_grad():
        w.grad -= (w.grad * w).sum(1, keepdim=True) * w
    opt = torch.optim.Adam(list(ref.values()), lr=lr)
    opt.step()
    with torch.no_grad():
        w /= w.norm(dim=1, keepdim=True)
    for key, value in ref.items():
        torch.testing.assert_close(sae.params[key].detach().double(), value.detach(),
                                   rtol=1e-5, atol=1e-6, msg=key)  # fmt: skip


def test_sparse_and_dense_paths_agree_over_steps() -> None:
    """The sparse backward and the dense formulation (`_encode` + `train_codes`) train the same
    SAE: several steps, AuxK with dead latents included."""
    acts = _data(2)
    cfg = _cfg(dead_feature_threshold=1)
    runs = {}
    for sparse in (True, False):
        sae = TrainableSAE("s", Site(0), cfg, D_IN, total_steps=4)
        sae._sparse_topk = sparse
        sae.initialise(acts)
        for step in range(4):
            out = sae.micro_step(acts[step * N : (step + 1) * N], step, 1.0)
            sae.optimizer_step(step)
        assert out.losses.get("auxk", 0.0) > 0  # latents went dead: the dense term ran
        runs[sparse] = {k: v.detach().clone() for k, v in sae.params.items()}
    for key, value in runs[False].items():
        torch.testing.assert_close(runs[True][key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_input_gradient_is_refused() -> None:
    xs = torch.randn(4, 3, requires_grad=True)
    with pytest.raises(ValueError, match="data"):
        topk_encode(xs, None, torch.randn(3, 8), torch.zeros(8), 2)


@pytest.mark.parametrize("shared", [False, True])
def test_sparse_decode_gradients_equal_autograd_float64(shared: bool) -> None:
    """`sparse_decode`'s backward (latent-grouped W_dec rows, per-code dots) against autograd
    through `embedding_bag` in float64; latents that never fire get a zero row."""
    import torch.nn.functional as F

    from saedoctor.train.topk_encode import LatentOrder, sparse_decode

    gen = torch.Generator().manual_seed(3)
    d_sae, d = 64, 12
    idx = torch.stack([torch.randperm(d_sae - 8, generator=gen)[:K] for _ in range(N)])
    vals64 = torch.rand(N, K, generator=gen).double()
    w64 = torch.randn(d_sae, d, generator=gen).double()
    weights = torch.randn(N, d, generator=gen).double()
    grads = {}
    for name, dtype in (("fast", torch.float32), ("naive", torch.float64)):
        vals = vals64.to(dtype).requires_grad_(True)
        w = w64.to(dtype).requires_grad_(True)
        if name == "fast":
            out = sparse_decode(vals, idx, w, LatentOrder() if shared else None)
        else:
            out = F.embedding_bag(idx, w, per_sample_weights=vals, mode="sum")
        (out * weights.to(dtype)).sum().backward()
        grads[name] = (vals.grad.double(), w.grad.double(), out.detach().double())
    for fast, naive in zip(grads["fast"], grads["naive"], strict=True):
        torch.testing.assert_close(fast, naive, rtol=1e-5, atol=1e-5)
    assert grads["fast"][1][d_sae - 8 :].abs().max() == 0  # never fired: no gradient


def test_w_enc_is_latent_major_and_its_gradient_lands_without_a_copy() -> None:
    """W_enc is stored `[d_in, d_sae]` with latent-major strides, its sparse gradient arrives in
    that layout (no transpose copy), and Adam steps its contiguous transpose in place."""
    acts = _data()
    sae = TrainableSAE("s", Site(0), _cfg(), D_IN, total_steps=4)
    sae.initialise(acts)
    w_enc = sae.params["W_enc"]
    assert w_enc.shape == (D_IN, sae.d_sae) and w_enc.stride() == (1, D_IN)
    sae.micro_step(acts[:N], 0, 1.0)
    assert w_enc.grad.stride() == w_enc.stride()
    alias = sae.stepped["W_enc"]
    assert alias.is_contiguous() and alias.data_ptr() == w_enc.data_ptr()
    before = w_enc.detach().clone()
    sae.optimizer_step(0)
    assert not torch.equal(before, w_enc.detach())  # the step reached the parameter
    assert w_enc.grad is None and alias.grad is None


def test_resuming_a_checkpoint_with_row_major_moments_continues_the_same_run() -> None:
    """A checkpoint written before W_enc's moments were stored latent-major (no `layout`
    mark, moments `[d_in, d_sae]`) resumes to the same weights as the uninterrupted run."""
    acts = _data(4)
    runs = []
    for old_checkpoint in (False, True):
        sae = TrainableSAE("s", Site(0), _cfg(), D_IN, total_steps=4)
        sae.initialise(acts)
        for step in range(2):
            sae.micro_step(acts[step * N : (step + 1) * N], step, 1.0)
            sae.optimizer_step(step)
        state = sae.state_dict()
        if old_checkpoint:
            state.pop("layout")
            alias_index = list(sae.stepped).index("W_enc")
            moments = state["optimizer"]["state"][alias_index]
            for key in ("exp_avg", "exp_avg_sq"):
                moments[key] = moments[key].T.contiguous()  # as W_enc's own orientation
        resumed = TrainableSAE("s", Site(0), _cfg(), D_IN, total_steps=4)
        resumed.load_state_dict(state)
        for step in range(2, 4):
            resumed.micro_step(acts[step * N : (step + 1) * N], step, 1.0)
            resumed.optimizer_step(step)
        runs.append({k: v.detach().clone() for k, v in resumed.params.items()})
    for key, value in runs[0].items():
        torch.testing.assert_close(runs[1][key], value, rtol=0, atol=0, msg=key)
