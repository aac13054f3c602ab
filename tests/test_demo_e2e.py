"""`saedoctor diagnose` with no arguments: the embedded default, end to end (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from saedoctor.defaults import cache_dir


@pytest.mark.slow
def test_no_argument_diagnose_uses_the_shipped_sae_and_reports(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    # Reuse the converted model if this machine has it; the SAE is the one shipped in the package.
    models = cache_dir() / "models"
    if models.is_dir():
        (cache / "models").symlink_to(models)
    env = {**os.environ, "SAEDOCTOR_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "saedoctor", "diagnose", "--out", str(tmp_path / "run.json")]
    first = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=2400)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "variance explained" in first.stdout
    report = json.loads((tmp_path / "run.json").read_text())
    (entry,) = report["saes"]
    assert entry["site"]["hook_name"] == "blocks.10.hook_resid_post"
    assert entry["config"]["d_sae"] == 576 * 8 and entry["config"]["k"] == 32
    assert report["run"]["corpus"] == "python-docs@test"
    assert report["run"]["model"]["name"] == "SmolLM2-135M-Instruct"
    m = entry["metrics"]
    # A trained TopK SAE: exactly k active features unless a top-k value is 0, and it
    # reconstructs far better than chance on held-out text.
    assert 28 <= m["l0"] <= 32
    assert m["variance_explained"] > 0.5
    # Loss recovered is measured and graded in place of variance explained.
    assert 0.5 < m["loss_recovered"] <= 1.0
    assert m["ce_clean"] < m["ce_sae"] < m["ce_ablated"]
    assert entry["grading"]["statuses"]["loss_recovered"]["source"] == "loss_recovered"
    assert entry["config"]["metadata"]["training_corpus"] == "python-docs@train"
    # Feature cards: every flagged feature and 64 sampled alive ones, with real contexts.
    cards = entry["cards"]["features"]
    assert sum("sample" in c["why"] for c in cards) == 64
    flagged = set(m["always_on_features"]) | {d["feature"] for d in entry["dense_latents"]}
    assert flagged <= {c["feature"] for c in cards}
    for card in cards:
        top = card["top_contexts"]
        assert top and top[0]["activation"] == max(c["activation"] for c in top)
        assert top[0]["tokens"][top[0]["focus"]] and card["logit_lens"]["top"]
    # The second run measures the training-data shift on another corpus:
    # the SAE was trained on Python docstrings; Python source code is another domain.
    second = subprocess.run(
        [*cmd, "--json", "--quiet", "--compare-corpus", "python-code@test", "--no-downstream",
         "--html", str(tmp_path / "run.html")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=2400,
    )  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads(second.stdout)
    entry2 = again["saes"][0]
    assert entry2["metrics"]["l0"] == pytest.approx(m["l0"], rel=1e-12)
    shift = entry2["corpus_comparison"]
    assert shift["corpus"] == "python-code@test"
    assert shift["density_jsd"] > 0.05
    assert len(shift["appeared"]) + len(shift["disappeared"]) > 50
    # The rule fires exactly when its measured inputs cross its thresholds: a density shift
    # above JSD_THRESHOLD or a reconstruction change of DROP_THRESHOLD or more (the
    # own-domain gap cannot fire: the evaluated corpus is its training dataset).
    from saedoctor.health.rules.mismatch import DROP_THRESHOLD, JSD_THRESHOLD, RECON_KEYS

    deltas = shift["deltas"]
    expected = shift["density_jsd"] > JSD_THRESHOLD or any(
        abs(deltas[k]) >= DROP_THRESHOLD for k in RECON_KEYS if deltas.get(k) is not None
    )
    fired = "data_mismatch" in [d["id"] for d in entry2["diagnoses"]]
    assert fired == expected
    html = (tmp_path / "run.html").read_text()
    assert "python-code@test" in html
    from test_report_cards_browser import click_a_card_open

    assert click_a_card_open(tmp_path / "run.html").startswith("card-0-")
    assert ("training-data mismatch" in html) == fired
