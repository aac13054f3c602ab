"""`saedoctor demo`'s pipeline: a layer sweep trained in one pass, diagnosed, compared."""

from __future__ import annotations

import json

import pytest

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
