"""NaN/inf in activations, SAE outputs and logits: skipped, counted, located, never averaged in.

Every expected value comes from an independent computation: the HF model run by hand with
its own hooks, a float64 relu SAE written out here, and masks built from the token batches.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import random_sae, saved_sae

from saedoctor.activations.batches import token_batches
from saedoctor.activations.corpus import iter_documents
from saedoctor.diagnose import DiagnoseOptions, SAEUnderTest, diagnose, feed, suite_sink
from saedoctor.metrics.finite import RowOrigin
from saedoctor.metrics.suite import MetricSuite
from saedoctor.sae.model import SAE
from saedoctor.sae.site import Site

# The MLP output of the tiny Llama's last block: a NaN written there reaches only its own
# position's logits (no attention after it), so the positions left out are known exactly.
LAST = 3
TAIL = Site(LAST, "mlp_out")
POISON = [(0, 3), (1, 7), (2, 30), (3, 12)]  # (row in batch, position) in every batch


def _opts(model_dir: Path, corpus: Path, sae: Path, **kw) -> DiagnoseOptions:
    base = dict(model=str(model_dir), saes=[str(sae)], corpus=str(corpus), tokens=512,
                context=32, batch_size=4, quiet=True, always_on_threshold=1.0)  # fmt: skip
    return DiagnoseOptions(**{**base, **kw})


def _batches(model_dir: Path, opts: DiagnoseOptions) -> list:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    return list(token_batches(tok, iter_documents(opts.corpus), context=opts.context,
                              batch_size=opts.batch_size, max_tokens=opts.tokens))  # fmt: skip


def _hf_model(model_dir: Path, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()


def _write(h: torch.Tensor, value: float, where: list[tuple[int, int]] | None) -> None:
    if h.shape[1] == 1:
        return
    if where is None:
        h.fill_(value)
    for b, t in where or []:
        if b < h.shape[0]:
            h[b, t] = value


def _poison_hook(value: float, where: list[tuple[int, int]] | None):
    """A forward hook on a decoder block writing `value` at (row, position) of its output
    (None: everywhere) in full-length batches; one-token probes are left alone."""

    def hook(_m, _a, out):
        _write(out[0] if isinstance(out, tuple) else out, value, where)

    return hook


def _module(model, site: Site):
    block = model.model.layers[site.layer]
    return block.mlp if site.kind == "mlp_out" else block


def _poisoning_loader(monkeypatch, site: Site, value: float, where) -> None:
    import saedoctor.activations.model as model_mod

    original = model_mod.load_model

    def load(*args, **kwargs):
        loaded = original(*args, **kwargs)
        _module(loaded.model, site).register_forward_hook(_poison_hook(value, where))
        return loaded

    monkeypatch.setattr(model_mod, "load_model", load)


def _site_rows(model, batches: list, site: Site) -> tuple[torch.Tensor, list]:
    """Counted rows of the site's activations, with (sequence, position) of each row."""
    rows, where = [], []
    captured = {}
    handle = _module(model, site).register_forward_hook(
        lambda _m, _a, out: captured.__setitem__("h", out[0] if isinstance(out, tuple) else out)
    )
    try:
        for batch in batches:
            with torch.no_grad():
                model(batch.input_ids)
            rows.append(captured["h"][batch.counted])
            b, t = batch.counted.nonzero(as_tuple=True)
            where += list(zip((b + batch.first_sequence).tolist(), t.tolist(), strict=True))
    finally:
        handle.remove()
    return torch.cat(rows), where


def _naive_relu(sae: SAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    p = {k: v.detach().double() for k, v in sae.named_parameters()}
    f = torch.relu((x.double() - p["b_dec"]) @ p["W_enc"] + p["b_enc"])
    return f, f @ p["W_dec"] + p["b_dec"]


def _naive_metrics(x: torch.Tensor, f: torch.Tensor, x_hat: torch.Tensor) -> dict[str, float]:
    x = x.double()
    res = ((x - x_hat) ** 2).sum(1)
    cos = (x * x_hat).sum(1) / (x.norm(dim=1) * x_hat.norm(dim=1))
    return {
        "tokens_seen": x.shape[0],
        "variance_explained": float(1 - res.sum() / ((x - x.mean(0)) ** 2).sum()),
        "mse": float(res.mean()),
        "l0": float((f != 0).sum(1).double().mean()),
        "cossim": float(cos.mean()),
    }


def _assert_sparse(metrics: dict, expected: dict, rel: float = 1e-6) -> None:
    assert metrics["tokens_seen"] == expected["tokens_seen"]
    for key in ("variance_explained", "mse", "l0", "cossim"):
        assert metrics[key] == pytest.approx(expected[key], rel=rel), key


def _strict_json(document: dict) -> dict:
    """Through the same strict encoder the report writer uses: a NaN anywhere fails."""
    return json.loads(json.dumps(document, allow_nan=False))


# -- downstream reference ------------------------------------------------------------------
def _replace_output(model, site: Site, make):
    def hook(_m, _a, out):
        new = make(out[0] if isinstance(out, tuple) else out)
        return (new, *out[1:]) if isinstance(out, tuple) else new

    return _module(model, site).register_forward_hook(hook)


def _naive_downstream(model, batches, site: Site, sae: SAE, skip: set) -> dict[str, float]:
    """CE and KL sums over counted positions not in `skip`, in float64, by hand."""
    sums = dict.fromkeys(("ce_clean", "ce_sae", "ce_abl", "kl_sae", "kl_abl", "n_ce", "n_kl"), 0.0)
    for batch in batches:
        ids, counted = batch.input_ids, batch.counted
        keep = counted.clone()
        for b, t in counted.nonzero().tolist():
            keep[b, t] = (b + batch.first_sequence, t) not in skip
        with torch.no_grad():
            clean = model(ids).logits.double().log_softmax(-1)
            cap = {}
            h = _module(model, site).register_forward_hook(
                lambda _m, _a, o, cap=cap: cap.__setitem__("x", o[0] if isinstance(o, tuple) else o)
            )
            model(ids)
            h.remove()
            x_hat = cap["x"].clone()
            x_hat[counted] = _naive_relu(sae, cap["x"][counted])[1].float()
            runs = {}
            for name, make in (("sae", lambda o, r=x_hat: r), ("abl", torch.zeros_like)):
                handle = _replace_output(model, site, make)
                runs[name] = model(ids).logits.double().log_softmax(-1)
                handle.remove()
        ce_mask = keep[:, :-1] & batch.real()[:, 1:]
        targets = ids[:, 1:, None]
        for name, logp in (("clean", clean), *runs.items()):
            nll = -logp[:, :-1].gather(-1, targets).squeeze(-1)
            sums[f"ce_{name}"] += float(nll[ce_mask].sum())
        for name, logq in runs.items():
            kl = (clean.exp() * (clean - logq)).sum(-1)
            sums[f"kl_{name}"] += float(kl[keep].sum())
        sums["n_ce"] += int(ce_mask.sum())
        sums["n_kl"] += int(keep.sum())
    ce = {k: sums[f"ce_{k}"] / sums["n_ce"] for k in ("clean", "sae", "abl")}
    kl = {k: sums[f"kl_{k}"] / sums["n_kl"] for k in ("sae", "abl")}
    return {
        "ce_clean": ce["clean"], "ce_sae": ce["sae"], "ce_ablated": ce["abl"],
        "loss_recovered": (ce["abl"] - ce["sae"]) / (ce["abl"] - ce["clean"]),
        "kl_sae": kl["sae"], "kl_ablated": kl["abl"],
        "kl_score": (kl["abl"] - kl["sae"]) / kl["abl"],
        "downstream_tokens": int(sums["n_ce"]),
    }  # fmt: skip


def _poisoned(batches: list, where: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(sequence, position) of the counted positions a `where` poison hits, in order."""
    hit = []
    for batch in batches:
        for b, t in where:
            if b < batch.input_ids.shape[0] and batch.counted[b, t]:
                hit.append((batch.first_sequence + b, t))
    return sorted(hit)


# -- tests ---------------------------------------------------------------------------------
@pytest.mark.parametrize("poison", [[], POISON], ids=["clean", "nan"])
def test_model_emitting_nan_skips_exactly_those_rows(
    tiny_llama_dir, text_corpus, tmp_path, monkeypatch, poison
):
    sae = random_sae(64, 256, architecture="relu", site=TAIL, seed=5)
    opts = _opts(tiny_llama_dir, text_corpus, saved_sae(tmp_path / "sae", sae))
    if poison:
        _poisoning_loader(monkeypatch, TAIL, float("nan"), poison)
    entry = _strict_json(diagnose(opts))["saes"][0]

    batches = _batches(tiny_llama_dir, opts)
    hit = _poisoned(batches, poison)
    assert len(hit) >= (3 if poison else 0)
    nf = entry["nonfinite"]
    assert nf == {"activation_rows_skipped": len(hit), "sae_output_rows_skipped": 0,
                  "downstream_positions_skipped": len(hit),
                  "first_positions": [list(p) for p in hit[:20]]}  # fmt: skip

    model = _hf_model(tiny_llama_dir)
    x, where = _site_rows(model, batches, TAIL)  # no poison: the clean values of other rows
    keep = torch.tensor([w not in set(hit) for w in where])
    f, x_hat = _naive_relu(sae, x[keep])
    _assert_sparse(entry["metrics"], _naive_metrics(x[keep], f, x_hat))
    expected = _naive_downstream(model, batches, TAIL, sae, set(hit))
    for key, value in expected.items():
        assert entry["metrics"][key] == pytest.approx(value, rel=1e-4, abs=1e-7), key
    assert not entry["not_measured"]


def _overflowing_llama(base: Path, out: Path, opts: DiagnoseOptions, layer: int) -> Path:
    """The tiny Llama with block `layer`'s MLP output scaled up so that ~30% of positions
    leave the fp16 range (65504) while float32 stays far from its own."""
    model = _hf_model(base)
    batches = _batches(base, opts)
    cap = {}
    handle = model.model.layers[layer].mlp.register_forward_hook(
        lambda _m, _a, o: cap.setdefault("m", []).append(o)
    )
    with torch.no_grad():
        for batch in batches:
            model(batch.input_ids)
    handle.remove()
    peak = torch.cat([m[b.counted] for m, b in zip(cap["m"], batches, strict=True)]).abs()
    scale = 65504.0 / float(peak.amax(1).quantile(0.7))
    mlp = model.model.layers[layer].mlp
    with torch.no_grad():  # split over two linear maps, so no fp16 weight overflows itself
        mlp.up_proj.weight.mul_(scale**0.5)
        mlp.down_proj.weight.mul_(scale**0.5)
    model.save_pretrained(out)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def test_fp16_overflow_rows_are_skipped(tiny_llama_dir, text_corpus, tmp_path):
    layer = 1
    sae = random_sae(64, 256, architecture="relu", site=Site(layer), seed=6)
    path = saved_sae(tmp_path / "sae", sae)
    opts = _opts(tiny_llama_dir, text_corpus, path, dtype="float16")
    model_dir = _overflowing_llama(tiny_llama_dir, tmp_path / "hot", opts, layer)
    opts.model = str(model_dir)
    batches = _batches(model_dir, opts)

    x32, _ = _site_rows(_hf_model(model_dir), batches, Site(layer))
    assert torch.isfinite(x32).all()  # float32 holds these values ...
    x16, where = _site_rows(_hf_model(model_dir, torch.float16), batches, Site(layer))
    bad = ~torch.isfinite(x16).all(1)
    assert 0 < int(bad.sum()) < bad.numel()  # ... fp16 does not, at some positions only
    assert torch.isinf(x16[bad]).any()

    entry = _strict_json(diagnose(opts))["saes"][0]
    nf = entry["nonfinite"]
    assert nf["activation_rows_skipped"] == int(bad.sum())
    assert nf["sae_output_rows_skipped"] == 0
    located = [tuple(w) for w, b in zip(where, bad.tolist(), strict=True) if b]
    # An inf reaches every later position through attention: the clean logits there are
    # not finite either, so loss recovered leaves out more positions than the overflowed
    # ones, and the first positions (of anything left out) hold those too, in order.
    assert nf["downstream_positions_skipped"] >= int(bad.sum())
    first = [tuple(p) for p in nf["first_positions"]]
    assert len(first) == 20 and first == sorted(set(first))
    assert [p for p in first if p in set(located)] == [p for p in located if p <= first[-1]]
    f, x_hat = _naive_relu(sae, x16[~bad].float())
    _assert_sparse(entry["metrics"], _naive_metrics(x16[~bad].float(), f, x_hat))


def _overflowing_sae(sae: SAE, x: torch.Tensor, quantile: float) -> SAE:
    """`sae` with feature 0's bias just under the float32 limit and its encoder column along
    the activations' main direction, so that rows above the `quantile` along it overflow
    (an inf code, a non-finite x̂) and the others stay finite. (The loaders run fp16 SAEs in
    float32, so an SAE file can only overflow float32 itself.)"""
    hot = SAE(sae.cfg)
    u = torch.linalg.svd(x.double(), full_matrices=False).Vh[0]
    u = u if (x.double() @ u).median() > 0 else -u
    scale = 1e38
    margin = float((x.double() @ u).quantile(quantile)) * scale
    with torch.no_grad():
        for name, p in hot.named_parameters():
            p.copy_(getattr(sae, name))
        hot.b_dec.zero_()
        hot.W_enc[:, 0] = (u * scale).float()
        hot.b_enc[0] = torch.finfo(torch.float32).max - margin
        hot.W_dec[0] = 0.0  # a finite code adds nothing; inf · 0 is still NaN
    assert all(torch.isfinite(p).all() for p in hot.parameters())
    return hot


def test_sae_output_nonfinite_on_some_rows(tiny_llama_dir, text_corpus, tmp_path):
    base = random_sae(64, 256, architecture="relu", site=TAIL, seed=7)
    opts = _opts(tiny_llama_dir, text_corpus, tmp_path / "sae")
    batches = _batches(tiny_llama_dir, opts)
    model = _hf_model(tiny_llama_dir)
    x, where = _site_rows(model, batches, TAIL)
    hot = _overflowing_sae(base, x, 0.7)
    saved_sae(tmp_path / "sae", hot)
    with torch.no_grad():
        x_hat, codes = hot(x)
    bad = ~(torch.isfinite(x_hat).all(1) & torch.isfinite(codes.values).all(1))
    assert 0 < int(bad.sum()) < bad.numel()

    entry = _strict_json(diagnose(opts))["saes"][0]
    nf = entry["nonfinite"]
    assert nf["activation_rows_skipped"] == 0
    assert nf["sae_output_rows_skipped"] == int(bad.sum())
    # At the last MLP a non-finite x̂ spoils only its own position's patched logits.
    assert nf["downstream_positions_skipped"] == int(bad.sum())
    located = [list(w) for w, b in zip(where, bad.tolist(), strict=True) if b]
    assert nf["first_positions"] == located[:20]
    ok = ~bad
    f = codes.values[ok].double()
    _assert_sparse(entry["metrics"], _naive_metrics(x[ok], f, x_hat[ok].double()), rel=1e-9)


def test_every_row_nonfinite_reports_not_measured(
    tiny_llama_dir, text_corpus, tmp_path, monkeypatch
):
    from typer.testing import CliRunner

    from saedoctor.cli import app

    sae = saved_sae(tmp_path / "sae", random_sae(64, 256, site=Site(1), seed=8))
    _poisoning_loader(monkeypatch, Site(1), float("inf"), None)
    out = tmp_path / "run.json"
    args = ["diagnose", "--quiet", "--model", str(tiny_llama_dir), "--sae", str(sae),
            "--corpus", str(text_corpus), "--tokens", "256", "--context", "32",
            "--batch-size", "4", "--out", str(out), "--md", str(tmp_path / "run.md"),
            "--html", str(tmp_path / "run.html")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output

    def no_constants(name: str):
        raise AssertionError(f"{name} in the report JSON")

    document = json.loads(out.read_text(), parse_constant=no_constants)
    entry = document["saes"][0]
    counted = document["run"]["tokens_counted"]
    assert entry["nonfinite"]["activation_rows_skipped"] == counted
    assert entry["nonfinite"]["downstream_positions_skipped"] == counted
    every = _poisoned(
        _batches(tiny_llama_dir, _opts(tiny_llama_dir, text_corpus, sae, tokens=256)),
        [(b, t) for b in range(4) for t in range(32)],
    )
    assert entry["nonfinite"]["first_positions"] == [list(p) for p in every[:20]]
    for key in ("variance_explained", "mse", "l0", "dead_pct", "diversity_top10",
                "absorption", "loss_recovered", "kl_score"):  # fmt: skip
        assert key not in entry["metrics"], key
        assert "non-finite" in entry["not_measured"][key], key
    assert entry["metrics"]["tokens_seen"] == 0
    assert entry["grading"]["grade"] == "not measured"
    for view in ("run.md", "run.html"):
        assert "non-finite values (NaN/inf) skipped" in (tmp_path / view).read_text()


def test_feed_merge_and_state_round_trip(one_thread) -> None:
    """Shards merged equal one pass, counters and locations included, through safetensors."""
    from safetensors.torch import load, save

    sae = random_sae(16, 48, seed=9)
    gen = torch.Generator().manual_seed(9)
    batches = []
    for i in range(4):
        x = torch.randn(40, 16, generator=gen)
        x[[3, 17, 30][: i + 1], i] = torch.tensor([torch.nan, torch.inf, -torch.inf][: i + 1])
        batches.append((x, torch.arange(40) // 8, RowOrigin(i * 5, 8, torch.arange(40))))

    def run(part):
        unit = SAEUnderTest("u", "-", sae, MetricSuite(16, 48))
        for x, seq, where in part:
            feed(unit, x, seq, suite_sink, where)
        return unit.suite

    whole, merged = run(batches), run(batches[:2]).merge(run(batches[2:]))
    restored = MetricSuite(16, 48)
    restored.load_state_dict(load(save(merged.state_dict())))
    nf = whole.nonfinite.compute()
    assert nf["activation_rows_skipped"] == 1 + 2 + 3 + 3
    assert nf["first_positions"][:3] == [[0, 3], [5, 3], [7, 1]]
    assert restored.nonfinite.compute() == merged.nonfinite.compute() == nf
    finite = torch.cat([x[torch.isfinite(x).all(1)] for x, _, _ in batches])
    with torch.no_grad():
        x_hat, codes = sae(finite)
    expected = _naive_metrics(finite, codes.dense().double(), x_hat.double())
    for suite in (whole, restored):
        _assert_sparse(suite.compute(), expected, rel=1e-9)
