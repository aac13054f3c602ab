"""`saedoctor demo`'s pipeline: a layer sweep trained in one pass, diagnosed, compared."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")


def test_demo_pipeline_on_the_tiny_model(tiny_llama_dir, text_corpus, tmp_path, capsys):
    from saedoctor.train.demo import run_demo

    out = tmp_path / "demo"
    kwargs = dict(model=str(tiny_llama_dir), train_corpus=str(text_corpus),
                  eval_corpus=str(text_corpus), context=32, batch_size=2, shuffle_tokens=512,
                  expansion_factor=2, top_k=8)  # fmt: skip
    document = run_demo([0, 1, 3], 2048, 1024, out, quiet=True, **kwargs)
    names = [e["name"] for e in document["saes"]]
    assert [e["site"]["layer"] for e in document["saes"]] == [0, 1, 3]
    assert all(e["grading"]["grade"] in ("excellent", "good", "poor") for e in document["saes"])
    assert (out / "run.json").is_file() and "<html" in (out / "report.html").read_text()[:500]
    summary = json.loads((out / "saes" / "train.json").read_text())
    assert summary["steps"] == 2048 // 64 and len(summary["saes"]) == 3
    shown = capsys.readouterr()
    assert "L0-resid_post-topk-x2-k8" in shown.out + shown.err
    # a second demo with the same settings reuses the trained SAEs
    again = run_demo([0, 1, 3], 2048, 1024, out, quiet=True, **kwargs)
    assert [e["name"] for e in again["saes"]] == names
    assert "reusing the SAEs" in capsys.readouterr().err


def test_transcoder_demo_hands_circuit_tracing_its_files(tiny_llama_dir, text_corpus, tmp_path):
    """`demo --kind transcoder`: skip transcoders at blocks 0..n-1, diagnosed, written in
    circuit-tracer's layout (which reads back as what was trained), with the exclusion list,
    its mask and the folded set."""
    from safetensors.torch import load_file

    from saedoctor.sae.loaders import load_dictionaries, load_sae
    from saedoctor.train.demo import run_demo

    out = tmp_path / "demo"
    document = run_demo([0, 1, 2], 2048, 1024, out, quiet=True, kind="transcoder",
                        model=str(tiny_llama_dir), train_corpus=str(text_corpus),
                        eval_corpus=str(text_corpus), context=32, batch_size=2,
                        shuffle_tokens=512, expansion_factor=2, top_k=8)  # fmt: skip
    entries = document["saes"]
    assert [(e["site"]["kind"], e["site"]["output"]["kind"]) for e in entries] == [
        ("mlp_in", "mlp_out")] * 3  # fmt: skip
    assert all(e["config"]["kind"] == "transcoder" and e["config"]["skip"] for e in entries)
    assert document["transcoder_set"]["layers"] == [0, 1, 2]
    traced = load_dictionaries(out / "saes" / "circuit_tracer")
    x = torch.randn(16, traced[0].cfg.d_in, generator=torch.Generator().manual_seed(0))
    for entry, tc in zip(entries, traced, strict=True):
        native = load_sae(entry["path"])
        assert torch.allclose(tc(x)[0], native(x)[0], atol=1e-5)
    listed = json.loads((out / "circuit_tracing" / "exclude.json").read_text())
    mask = load_file(str(out / "circuit_tracing" / "exclude_mask.safetensors"))["exclude"]
    for entry in entries:
        layer = entry["site"]["layer"]
        ids = [f["id"] for f in listed["exclude"][str(layer)]]
        assert ids == sorted(entry["metrics"]["always_on_features"])  # ascending, per layer
        assert torch.nonzero(mask[layer]).flatten().tolist() == sorted(ids)
    assert len(load_dictionaries(out / "circuit_tracing" / "folded")) == 3
