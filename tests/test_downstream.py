"""Loss recovered, CE and KL against independent computations with the model's own loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import saved_sae

from saedoctor.activations.sites import decoder_blocks
from saedoctor.activations.splice import Splicer
from saedoctor.diagnose import DiagnoseOptions, diagnose
from saedoctor.sae.model import SAE, SAEConfig
from saedoctor.sae.site import SITE_KINDS, Site
from test_activations import FAMILIES, tiny_model


def identity_sae(d: int, site: Site) -> SAE:
    """relu(x) − relu(−x) = x exactly: a perfect reconstruction."""
    sae = SAE(SAEConfig("relu", d, 2 * d, site=site))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
    return sae


def zero_sae(d: int, site: Site) -> SAE:
    """Reconstructs every token as the zero vector."""
    return SAE(SAEConfig("relu", d, 4, site=site))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", SITE_KINDS)
def test_restarting_from_captured_inputs_reproduces_logits(family: str, kind: str) -> None:
    model = tiny_model(family)
    ids = torch.randint(3, 100, (2, 12))
    site = Site(1, kind)
    splicer = Splicer(model, [site])
    logits, acts = splicer.clean(ids)
    assert splicer.resumable is True
    with torch.inference_mode():
        expected = model(input_ids=ids, use_cache=False).logits
    assert torch.allclose(logits, expected)
    same = splicer.patched(site, acts[site])
    assert torch.allclose(same, logits, atol=1e-5, rtol=1e-5)
    # A real change to the site changes the logits, exactly as a hooked full forward does.
    changed = splicer.patched(site, acts[site] * 0.5)
    module = decoder_blocks(model)[1]
    assert not torch.allclose(changed, logits)
    splicer.resumable = False
    full = splicer.patched(site, acts[site] * 0.5)
    assert torch.allclose(changed, full, atol=1e-5, rtol=1e-4), module


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ["resid_post", "resid_pre"])
def test_zero_ablated_residual_is_one_tokens_logits_everywhere(family: str, kind: str) -> None:
    model = tiny_model(family)
    ids = torch.randint(3, 100, (3, 10))
    site = Site(1, kind)
    splicer = Splicer(model, [site])
    _, acts = splicer.clean(ids)
    with torch.inference_mode():
        full = splicer.patched(site, torch.zeros_like(acts[site]))
    counted = torch.ones(ids.shape, dtype=torch.bool)
    first = splicer.zero_ablated(site, counted)  # the check batch: the full run itself
    assert torch.equal(first, full)
    constant = splicer.zero_ablated(site, counted)
    assert constant.shape == (full.shape[-1],)
    assert torch.allclose(full, constant.expand_as(full), atol=1e-5, rtol=1e-5)


def test_zero_ablation_of_a_component_site_is_not_constant() -> None:
    model = tiny_model("llama")
    ids = torch.randint(3, 100, (2, 10))
    site = Site(1, "mlp_out")
    splicer = Splicer(model, [site])
    _, acts = splicer.clean(ids)
    counted = torch.ones(ids.shape, dtype=torch.bool)
    for _ in range(2):  # zeroing one component leaves the residual stream varying
        assert splicer.zero_ablated(site, counted).shape == (2, 10, model.config.vocab_size)


def test_zero_ablation_falls_back_when_positions_differ() -> None:
    model = tiny_model("llama")
    ids = torch.randint(3, 100, (2, 10))
    site = Site(1)
    splicer = Splicer(model, [site])
    _, acts = splicer.clean(ids)
    counted = torch.ones(ids.shape, dtype=torch.bool)
    splicer._ablated[site] = torch.full((model.config.vocab_size,), 5.0)  # a wrong one
    splicer.zero_ablated(site, counted)
    assert splicer.zero_ablated(site, counted).dim() == 3


def _run(model_dir, corpus, sae_dir, **kw):
    opts = dict(model=str(model_dir), saes=[str(sae_dir)], corpus=str(corpus), tokens=512,
                context=32, batch_size=4, quiet=True, include_special=True)  # fmt: skip
    opts.update(kw)
    return diagnose(DiagnoseOptions(**opts))["saes"][0]


def _hf_losses(model_dir, corpus, layer: int, sae: SAE):
    """CE with HF's own `labels=` loss: clean, with the SAE spliced by a hook, zero-ablated."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from saedoctor.activations.batches import token_batches
    from saedoctor.activations.corpus import iter_documents

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    block = decoder_blocks(model)[layer]
    out = {"clean": [], "sae": [], "ablated": []}
    for b in token_batches(tok, iter_documents(str(corpus)), context=32, batch_size=4,
                           max_tokens=512, include_special=True):  # fmt: skip
        assert bool(b.real().all())  # whole sequences: HF's mean is over every position
        for which, fn in (("clean", None), ("sae", lambda h: sae(h.reshape(-1, h.shape[-1]))[0]
                          .reshape(h.shape)), ("ablated", torch.zeros_like)):  # fmt: skip
            hook = None
            if fn is not None:
                hook = block.register_forward_hook(
                    lambda _m, _a, o, fn=fn: (
                        fn(o) if isinstance(o, torch.Tensor) else (fn(o[0]), *o[1:])
                    )
                )
            with torch.no_grad():
                loss = model(input_ids=b.input_ids, labels=b.input_ids).loss
            if hook is not None:
                hook.remove()
            out[which].append(float(loss))
    return {k: sum(v) / len(v) for k, v in out.items()}


def test_identity_and_zero_reconstructions(tiny_llama_dir, text_corpus, tmp_path) -> None:
    site = Site(1)
    sae_id, sae_zero = identity_sae(64, site), zero_sae(64, site)
    ident = _run(tiny_llama_dir, text_corpus, saved_sae(tmp_path / "id", sae_id))
    zero = _run(tiny_llama_dir, text_corpus, saved_sae(tmp_path / "z", sae_zero))
    gaps = _route_gaps(tiny_llama_dir, text_corpus, [sae_id, sae_zero], tokens=512, context=32)
    _assert_identity_and_zero(ident["metrics"], zero["metrics"], gaps, tokens=512)
    assert ident["grading"]["statuses"]["loss_recovered"]["source"] == "loss_recovered"


# Σ p·(log p − log q) ≤ Σ p · max|log p − log q|; float32 rounds Σ p (≤ 1e-4 off 1) and the
# V-term sum (≤ V·2⁻²⁴ < 0.3% for V < 50k), float64 means add ~1e-13 relative: within 1%.
KL_SLACK = 1.01
RATIO_ROUNDING = 2.0**-50  # a float64 (a − b) / (a − c) near 1: a few ulps of 1


def _route_gaps(model_dir, corpus, saes: list[SAE], *, tokens: int,
                context: int) -> list[dict[str, float]]:  # fmt: skip
    """Per SAE, the largest |Δ log-softmax| (float32, as scored) over the run's positions
    between the two routes each score compares: the SAE's patched run vs the clean run
    (`clean`), and vs the zero-ablation route diagnose takes, one-token or full (`ablated`)."""
    from saedoctor.activations.batches import token_batches
    from saedoctor.activations.corpus import iter_documents
    from saedoctor.activations.model import load_model

    loaded = load_model(str(model_dir))
    site = saes[0].cfg.site
    splicer = Splicer(loaded.model, [site])
    gaps = [{"clean": 0.0, "ablated": 0.0} for _ in saes]
    for b in token_batches(loaded.tokenizer, iter_documents(str(corpus)), context=context,
                           batch_size=4, max_tokens=tokens, include_special=True):  # fmt: skip
        logits, acts = splicer.clean(b.input_ids)
        ablated = F.log_softmax(splicer.zero_ablated(site, b.counted), -1)
        clean = F.log_softmax(logits, -1)
        x = acts[site]
        for sae, gap in zip(saes, gaps, strict=True):
            with torch.inference_mode():
                x_hat = sae(x.reshape(-1, x.shape[-1]))[0].view_as(x)
            patched = F.log_softmax(splicer.patched(site, x_hat), -1)
            gap["clean"] = max(gap["clean"], float((patched - clean).abs().max()))
            gap["ablated"] = max(gap["ablated"], float((patched - ablated).abs().max()))
    return gaps


def _assert_identity_and_zero(m: dict, z: dict, gaps: list[dict[str, float]], tokens: int) -> None:
    """Identity (`m`) and zero (`z`) reconstructions, every position counted, against bounds
    from the measured gaps between the routes each score compares (`_route_gaps`)."""
    ident_gap, zero_gap = gaps[0]["clean"], gaps[1]["ablated"]
    # Each position's CE is one entry of its log-softmax, so it moves by at most the gap; the
    # float64 means of `tokens` positive values round by at most tokens·2⁻⁵³ relative.
    ce_bound = ident_gap + tokens * 2.0**-53 * (m["ce_sae"] + m["ce_clean"])
    assert abs(m["ce_sae"] - m["ce_clean"]) <= ce_bound
    kl_bound = KL_SLACK * ident_gap
    assert abs(m["kl_sae"]) <= kl_bound
    ce_gap = m["ce_ablated"] - m["ce_clean"]
    assert m["loss_recovered"] == pytest.approx(1.0, abs=ce_bound / ce_gap + RATIO_ROUNDING)
    assert m["kl_score"] == pytest.approx(1.0, abs=kl_bound / m["kl_ablated"] + RATIO_ROUNDING)
    # A zero residual stays exactly zero through bias-free Llama blocks (RMSNorm, attention and
    # SwiGLU of 0 are 0) and lm_head(0) = 0: both zero-ablation routes give the same (zero)
    # logits on any IEEE machine, whatever the kernels' summation order.
    assert zero_gap == 0.0
    # Equal logits, and the same float32 operations on them (CleanDistribution scores the
    # one-token row broadcast through the patched run's kernels): equal scores, not near ones.
    assert z["kl_sae"] == z["kl_ablated"] and z["kl_score"] == 0.0
    assert z["ce_sae"] == z["ce_ablated"] and z["loss_recovered"] == 0.0
    # The clean and zero-ablated runs of both SAEs are the same computations twice.
    assert m["ce_clean"] == z["ce_clean"] and m["ce_ablated"] == z["ce_ablated"]


def test_ce_values_equal_models_own_loss(tiny_llama_dir, text_corpus, tmp_path) -> None:
    from helpers import random_sae

    sae = random_sae(64, 256, site=Site(2), seed=11)
    entry = _run(tiny_llama_dir, text_corpus, saved_sae(tmp_path / "s", sae))
    expected = _hf_losses(tiny_llama_dir, text_corpus, 2, sae)
    m = entry["metrics"]
    assert m["ce_clean"] == pytest.approx(expected["clean"], rel=1e-5)
    assert m["ce_sae"] == pytest.approx(expected["sae"], rel=1e-5)
    assert m["ce_ablated"] == pytest.approx(expected["ablated"], rel=1e-5)
    gap = expected["ablated"] - expected["clean"]
    assert m["loss_recovered"] == pytest.approx((expected["ablated"] - expected["sae"]) / gap,
                                                rel=1e-4)  # fmt: skip


def test_no_downstream_flag_reports_not_measured(tiny_llama_dir, text_corpus, tmp_path) -> None:
    entry = _run(
        tiny_llama_dir,
        text_corpus,
        saved_sae(tmp_path / "s", identity_sae(64, Site(1))),
        downstream=False,
    )
    assert "loss_recovered" in entry["not_measured"]
    assert entry["grading"]["statuses"]["loss_recovered"]["source"] == "variance_explained"


@pytest.mark.slow
def test_default_model_identity_and_zero(tmp_path) -> None:
    from saedoctor.activations.model import ensure_default_cached

    model_dir = ensure_default_cached()
    site = Site(10)
    sae_id, sae_zero = identity_sae(576, site), zero_sae(576, site)
    run = dict(tokens=1024, context=64)
    ident = _run(model_dir, "python-docs@test", saved_sae(tmp_path / "id", sae_id), **run)
    zero = _run(model_dir, "python-docs@test", saved_sae(tmp_path / "z", sae_zero), **run)
    gaps = _route_gaps(model_dir, "python-docs@test", [sae_id, sae_zero], **run)
    _assert_identity_and_zero(ident["metrics"], zero["metrics"], gaps, tokens=run["tokens"])


def test_sae_after_the_last_block() -> None:
    """resid_post of the last block: the patched run is just the final norm and the head."""
    model = tiny_model("llama")
    ids = torch.randint(3, 100, (2, 10))
    site = Site(len(decoder_blocks(model)) - 1)
    splicer = Splicer(model, [site])
    logits, acts = splicer.clean(ids)
    assert splicer.resumable is True
    with torch.inference_mode():
        assert torch.allclose(splicer.patched(site, acts[site]), logits, atol=1e-5, rtol=1e-5)
        halved = splicer.patched(site, acts[site] * 0.5)
        splicer.resumable = False
        assert torch.allclose(halved, splicer.patched(site, acts[site] * 0.5), atol=1e-5)
