"""The diagnose pipeline end to end on a tiny local model, against independent computations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import random_sae, saved_sae

from saedoctor.diagnose import DiagnoseOptions, diagnose
from saedoctor.sae.site import Site


def _opts(model_dir: Path, corpus: Path, saes: list[Path], **kw) -> DiagnoseOptions:
    base = dict(
        model=str(model_dir),
        saes=[str(p) for p in saes],
        corpus=str(corpus),
        tokens=512,
        context=32,
        batch_size=4,
        quiet=True,
    )
    base.update(kw)
    return DiagnoseOptions(**base)


def test_one_forward_pass_per_batch_and_stops_at_deepest_block(
    tiny_llama_dir, text_corpus, tmp_path, monkeypatch
):
    import saedoctor.activations.model as model_mod

    calls: dict[str, int] = {}
    original = model_mod.load_model

    def counting_load(*args, **kwargs):
        loaded = original(*args, **kwargs)
        inner = loaded.model.model
        modules = {"embed": inner.embed_tokens, "lm_head": loaded.model.lm_head, "norm": inner.norm}
        modules.update({f"block{i}": blk for i, blk in enumerate(inner.layers)})
        for name, mod in modules.items():
            calls[name] = calls[f"{name}@1"] = 0
            mod.register_forward_hook(lambda _m, _i, out, n=name: count(n, out))
        return loaded

    def count(name: str, out) -> None:
        out = out[0] if isinstance(out, tuple) else out
        key = f"{name}@1" if out.shape[0] * out.shape[1] == 1 else name  # one-token forwards
        calls[key] += 1

    monkeypatch.setattr(model_mod, "load_model", counting_load)
    saes = [
        saved_sae(tmp_path / "l0", random_sae(64, 256, site=Site(0, "resid_post"))),
        saved_sae(tmp_path / "l1", random_sae(64, 256, site=Site(1, "mlp_out"), seed=1)),
        saved_sae(tmp_path / "l2", random_sae(64, 256, site=Site(2, "resid_pre"), seed=2)),
    ]
    # No feature can pass a threshold of 1.0, so no explanation pass adds forwards here; the
    # pre-flight's own short forward (tests/test_preflight.py) is not what this test counts.
    opts = _opts(tiny_llama_dir, text_corpus, saes, always_on_threshold=1.0, downstream=False,
                 preflight="none")
    report = diagnose(opts)
    n_batches = report["run"]["sequences"] // 4 + (report["run"]["sequences"] % 4 > 0)
    assert n_batches == 4  # 512 tokens / 32 context / 4 per batch
    assert calls["embed"] == n_batches
    assert calls["block0"] == calls["block1"] == n_batches
    # resid_pre of block 2 is read before block 2 runs: blocks 2, 3, the norm and lm_head never run
    assert calls["block2"] == calls["block3"] == calls["norm"] == calls["lm_head"] == 0
    # With loss recovered: still one embedding pass per batch; the patched runs restart
    # from captured block inputs, so block 0 (before every site) runs once per batch too.
    for name in calls:
        calls[name] = 0
    diagnose(_opts(tiny_llama_dir, text_corpus, saes, always_on_threshold=1.0, preflight="none"))
    assert calls["embed"] == calls["block0"] == n_batches
    # Per batch: the clean pass, 3 SAE tails, and the mlp_out site's ablation tail. Zero-
    # ablating a residual site is one token's forward, checked once against a full ablated
    # tail on the first batch; plus the one-off check that restarting from captured inputs
    # reproduces the logits.
    assert calls["lm_head"] == 5 * n_batches + 2 + 1
    assert calls["embed@1"] == calls["lm_head@1"] == 2
    assert [e["site"]["hook_name"] for e in report["saes"]] == [
        "blocks.0.hook_resid_post",
        "blocks.1.hook_mlp_out",
        "blocks.2.hook_resid_pre",
    ]


def _reference_activations(model_dir: Path, opts: DiagnoseOptions, layer: int):
    """Counted-token resid_post activations from HF hidden_states, computed independently."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from saedoctor.activations.batches import token_batches
    from saedoctor.activations.corpus import iter_documents

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    rows, seqs, offset = [], [], 0
    for batch in token_batches(
        tok,
        iter_documents(opts.corpus),
        context=opts.context,
        batch_size=opts.batch_size,
        max_tokens=opts.tokens,
    ):
        with torch.no_grad():
            hs = model(batch.input_ids, output_hidden_states=True).hidden_states[layer + 1]
        special = torch.tensor([tok.bos_token_id, tok.eos_token_id, tok.pad_token_id])
        counted = ~torch.isin(batch.input_ids, special)
        assert torch.equal(counted, batch.counted)
        rows.append(hs[counted].double())
        seq = torch.arange(batch.input_ids.shape[0])[:, None].expand_as(counted)[counted]
        seqs.append(seq + offset)
        offset += batch.input_ids.shape[0]
    return torch.cat(rows), torch.cat(seqs)


def test_pipeline_metrics_match_naive_reference(tiny_llama_dir, text_corpus, tmp_path):
    sae = random_sae(64, 512, architecture="relu", site=Site(1), seed=3)
    path = saved_sae(tmp_path / "relu", sae)
    opts = _opts(tiny_llama_dir, text_corpus, [path])
    report = diagnose(opts)
    m = report["saes"][0]["metrics"]
    x, _ = _reference_activations(tiny_llama_dir, opts, 1)
    sae.requires_grad_(False)
    pre = (x - sae.b_dec.double()) @ sae.W_enc.double() + sae.b_enc.double()
    f = torch.relu(pre)
    x_hat = f @ sae.W_dec.double() + sae.b_dec.double()
    n = x.shape[0]
    assert m["tokens_seen"] == n == report["run"]["tokens_counted"]
    ve = 1 - ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert m["variance_explained"] == pytest.approx(float(ve), rel=1e-5)
    # A pre-activation within float32 rounding of 0 may fire in the pipeline and not here (or
    # back): each such one moves the firing count, and the dead count, by at most one.
    ambiguous = int((pre.abs() <= _float32_pre_act_error(x, sae)).sum())
    assert abs(round(m["l0"] * n) - int((f != 0).sum())) <= ambiguous
    density = (f > 0).double().mean(0)
    assert abs(m["dead_count"] - int((density < 0.0005).sum())) <= ambiguous
    assert m["mse"] == pytest.approx(float(((x - x_hat) ** 2).sum(1).mean()), rel=1e-4)


def _float32_pre_act_error(x: torch.Tensor, sae) -> torch.Tensor:
    """Bound on |float32 − exact| of (x − b_dec) @ W_enc + b_enc for float32 `x` in any
    summation order: γ_{d+2}·(|x − b_dec| @ |W_enc| + |b_enc|), γ_n = n·u/(1 − n·u), u = 2⁻²⁴
    (Higham, Accuracy and Stability of Numerical Algorithms, §3.1)."""
    n_u = (x.shape[-1] + 2) * 2.0**-24
    centred = (x - sae.b_dec.double()).abs()
    return n_u / (1 - n_u) * (centred @ sae.W_enc.double().abs() + sae.b_enc.double().abs())


def test_cached_activations_give_same_metrics_without_model(tiny_llama_dir, text_corpus, tmp_path):
    from safetensors.torch import save_file

    sae = random_sae(64, 256, site=Site(1), seed=4)
    path = saved_sae(tmp_path / "topk", sae)
    opts = _opts(tiny_llama_dir, text_corpus, [path])
    x, _ = _reference_activations(tiny_llama_dir, opts, 1)
    save_file({"activations": x.float().contiguous()}, str(tmp_path / "acts.safetensors"))
    report = diagnose(
        DiagnoseOptions(
            saes=[str(path)], activations=str(tmp_path / "acts.safetensors"), quiet=True
        )
    )
    entry = report["saes"][0]
    assert report["run"]["model"] is None
    assert entry["metrics"]["tokens_seen"] == x.shape[0]
    assert "loss_recovered" in entry["not_measured"]
    with torch.no_grad():
        x_hat, codes = sae(x.float())
    ve = 1 - ((x - x_hat.double()) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert entry["metrics"]["variance_explained"] == pytest.approx(float(ve), rel=1e-5)


def test_report_is_valid_json_with_run_metadata(tiny_llama_dir, text_corpus, tmp_path):
    from saedoctor.report.document import read_report, write_report

    path = saved_sae(tmp_path / "s", random_sae(64, 256, site=Site(0)))
    report = diagnose(_opts(tiny_llama_dir, text_corpus, [path]))
    out = write_report(report, tmp_path / "run.json")
    again = read_report(out)
    assert again["schema"] == "saedoctor.report/1"
    assert again["run"]["versions"]["torch"] == torch.__version__
    assert again["run"]["tokens_processed"] == 512
    assert len(again["saes"][0]["feature_density"]) == 256
    json.loads(out.read_text())


def test_an_already_loaded_model_gives_the_same_report(
    tiny_llama_dir, text_corpus, tmp_path, monkeypatch
):
    """`diagnose(opts, loaded_model=...)` (a model built by the caller, e.g. a benchmark's
    random-weight model) runs on that model, never loads `opts.model`, and measures the same
    numbers as loading it by name."""
    import saedoctor.activations.model as model_mod

    saes = [saved_sae(tmp_path / "a", random_sae(64, 256, site=Site(1), seed=5)),
            saved_sae(tmp_path / "b", random_sae(64, 256, site=Site(2, "mlp_out"), seed=6))]
    by_name = diagnose(_opts(tiny_llama_dir, text_corpus, saes))
    loaded = model_mod.load_model(str(tiny_llama_dir))

    def no_load(*args, **kwargs):
        raise AssertionError("load_model called although a loaded model was given")

    monkeypatch.setattr(model_mod, "load_model", no_load)
    given = diagnose(_opts("unused-name", text_corpus, saes), loaded_model=loaded)
    assert given["run"]["tokens_processed"] == by_name["run"]["tokens_processed"] == 512
    for a, b in zip(given["saes"], by_name["saes"], strict=True):
        assert a["metrics"].keys() == b["metrics"].keys()
        assert "loss_recovered" in a["metrics"]
        for key, value in b["metrics"].items():
            if isinstance(value, float):
                assert a["metrics"][key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_a_corpus_that_ends_early_is_said_to(tiny_llama_dir, text_corpus, tmp_path):
    from saedoctor.report.sections import run_lines

    saes = [saved_sae(tmp_path / "l0", random_sae(64, 256, site=Site(0, "resid_post")))]
    kw = dict(downstream=False, preflight="none", cards=0)
    enough = diagnose(_opts(tiny_llama_dir, text_corpus, saes, **kw))
    assert "corpus_ended" not in enough["run"] and enough["run"]["sequences"] == 512 // 32
    asked = 10**9
    ended = diagnose(_opts(tiny_llama_dir, text_corpus, saes, tokens=asked, **kw))
    run = ended["run"]
    assert run["corpus_ended"] is True and run["sequences"] * 32 < asked
    tokens_line = next(line for line in run_lines(ended) if line.startswith("tokens counted"))
    assert tokens_line == (f"tokens counted: {run['tokens_counted']:,} "
                           f"(the corpus ended before the {asked:,} tokens asked for)")  # fmt: skip
