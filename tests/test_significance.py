"""`compare`'s tests between two SAEs: paired over the same sequence blocks, so what both
share cancels; an SAE against itself shows no detectable difference on any metric; a better
reconstruction on the same tokens is called better, with its interval."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import random_sae, saved_sae
from typer.testing import CliRunner

from saedoctor.cli import app
from saedoctor.metrics import MetricSuite
from saedoctor.report.comparison import compare_reports
from saedoctor.report.significance import NO_DIFFERENCE, compare_entries, short_verdict
from saedoctor.sae.codes import Codes
from saedoctor.sae.site import Site

D, M = 8, 24


def entry(noise: float, seed: int = 0) -> dict:
    """Invented activations, the same for every call with the same seed; the reconstruction
    error is `noise` times a per-sequence scale (the same hard sequences for every SAE)."""
    g = torch.Generator().manual_seed(seed)
    suite = MetricSuite(D, M, interval_blocks=16)
    for first in range(0, 64, 4):
        seq = torch.arange(first, first + 4).repeat_interleave(16)
        x = torch.randn(seq.numel(), D, generator=g) + torch.randn(4, D, generator=g)[seq - first]
        hard = (torch.rand(4, generator=g) * 3)[seq - first, None]
        err = torch.randn(seq.numel(), D, generator=g)
        codes = (torch.rand(seq.numel(), M, generator=g) < 0.2).float()
        suite.update(x, x + noise * hard * err, Codes(codes, None, M), seq)
    out = suite.compute()
    intervals = {"metrics": out.pop("intervals"), "blocks": out.pop("interval_blocks")}
    return {"metrics": out, "intervals": intervals}


def test_a_better_reconstruction_on_the_same_tokens_is_called_better_paired() -> None:
    a, b = entry(0.5), entry(0.45)
    paired = {d.metric: d for d in compare_entries(a, b, "A", "B", same_tokens=True)}
    unpaired = {d.metric: d for d in compare_entries(a, b, "A", "B", same_tokens=False)}
    ve = paired["variance_explained"]
    assert ve.paired and ve.delta > 0 and ve.low > 0
    assert ve.verdict.startswith("B beats A on variance explained (Δ = ")
    assert short_verdict(ve.__dict__) == "B better"
    assert paired["fvu"].verdict.startswith("B beats A on FVU")  # lower is better there
    # Pairing cancels what both share: the hard sequences.
    assert (ve.high - ve.low) < 0.2 * (unpaired["variance_explained"].high
                                       - unpaired["variance_explained"].low)
    assert not unpaired["variance_explained"].paired


def test_other_tokens_are_never_paired_even_with_equal_block_sizes() -> None:
    a, b = entry(0.5, seed=0), entry(0.5, seed=1)  # same shapes, other data
    assert a["intervals"]["blocks"]["tokens"] == b["intervals"]["blocks"]["tokens"]
    assert not any(d.paired for d in compare_entries(a, b, "A", "B", same_tokens=False))


@pytest.fixture()
def report(tiny_llama_dir, text_corpus, tmp_path):
    sae = saved_sae(tmp_path / "s", random_sae(64, 128, site=Site(1)))
    out = tmp_path / "run.json"
    result = CliRunner().invoke(app, [
        "diagnose", "--model", str(tiny_llama_dir), "--corpus", str(text_corpus),
        "--sae", str(sae), "--tokens", "1024", "--context", "32", "--quiet",
        "--out", str(out)])  # fmt: skip
    assert result.exit_code in (0, 1), result.output
    return out


def test_an_sae_against_itself_shows_no_detectable_difference_anywhere(report) -> None:
    document = json.loads(report.read_text())
    comparison = compare_reports([document, document], ["a.json", "b.json"])
    (pair,) = comparison["significance"]
    assert pair["paired"]
    tested = {d["metric"] for d in pair["differences"]}
    assert {"variance_explained", "l0", "loss_recovered", "kl_score", "diversity_top10",
            "dead_pct", "always_on_count"} <= tested  # fmt: skip
    for d in pair["differences"]:
        assert short_verdict(d) == NO_DIFFERENCE, d
        assert NO_DIFFERENCE in d["verdict"]
    result = CliRunner().invoke(app, ["compare", str(report), str(report)])
    assert result.exit_code == 0, result.output
    assert "is B different from A?" in result.output
