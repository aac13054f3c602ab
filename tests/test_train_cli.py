"""`saedoctor train` on the tiny model, and `--from-prescription` closing the loop with diagnose."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from saedoctor.cli import app
from saedoctor.train.config import TrainConfig
from saedoctor.train.prescription import apply_prescriptions, base_config, plan_from_document

pytestmark = pytest.mark.usefixtures("one_thread")


def _train_args(tiny_llama_dir: Path, corpus: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", str(tiny_llama_dir), "--dataset", str(corpus), "--layer", "1",
            "--tokens", "2048", "--context", "32", "--batch-size", "2", "--expansion-factor",
            "2", "--top-k", "8", "--set", "shuffle_tokens=512", "--out", str(out), "--quiet",
            *extra]  # fmt: skip


def test_bad_values_exit_2_with_one_line() -> None:
    result = CliRunner().invoke(app, ["train", "--expansion-factor", "0.25"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "expansion_factor=0.25" in lines[0]
    result = CliRunner().invoke(app, ["train", "--set", "expansion_factr=4"])
    assert result.exit_code == 2 and "did you mean expansion_factor" in result.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--preset", "finance"], "expected one of general, domain"),
        (["--config", "missing.toml"], "missing.toml"),
        (["--from-prescription", "missing.json"], "missing.json"),
        (["--resume", "--out", "nowhere"], "no checkpoint"),
        (["--set", "dead_feature_threshold=0.1"], "number of tokens"),
        (["--architecture", "relu"], "sparsity penalty"),
        (["--sae", "x"], "--from-prescription"),
        (["--set", "layers"], "FIELD=VALUE"),
    ],
)
def test_bad_train_input_is_one_line(args, needle, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["train", *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("saedoctor: error:") and needle in lines[0]


def test_train_then_retrain_from_the_diagnosis_prescriptions(tiny_llama_dir, text_corpus, tmp_path):
    from saedoctor.diagnose import DiagnoseOptions, diagnose
    from saedoctor.report.document import write_report

    runner = CliRunner()
    out = tmp_path / "base"
    args = _train_args(tiny_llama_dir, text_corpus, out, "--b-dec-init", "zeros",
                       "--auxk-alpha", "0", "--json")  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["tokens"] == 2048 and "history" not in printed
    sae_dir = out / "L1-resid_post-topk-x2-k8"
    assert (sae_dir / "cfg.json").is_file() and (out / "train.json").is_file()
    assert (out / "metrics.jsonl").read_text().strip()
    summary = json.loads((out / "train.json").read_text())
    assert summary["steps"] == 2048 // 64 and summary["tokens"] == 2048

    document = diagnose(DiagnoseOptions(model=str(tiny_llama_dir), saes=[str(sae_dir)],
                                        corpus=str(text_corpus), tokens=1024, quiet=True))
    entry = document["saes"][0]
    assert entry["config"]["metadata"]["training_corpus"] == str(text_corpus)
    # whatever the tiny SAE's own diagnosis says, prescribe the always-on fixes
    entry["prescriptions"] = [
        {"field": "diversity_loss_weight", "old": 0.0, "new": 0.01, "why": "always-on"},
        {"field": "b_dec_init", "old": "zeros", "new": "mean", "why": "bias direction"},
        {"field": "eval_tokens", "old": 1024, "new": 100000, "why": "short horizon"},
    ]
    report = write_report(document, tmp_path / "run.json")

    dry = runner.invoke(app, ["train", "--from-prescription", str(report), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "diversity_loss_weight: 0.0 → 0.01" in dry.output
    assert "b_dec_init: 'zeros' → 'mean'" in dry.output
    assert "skipped eval_tokens" in dry.output
    plan = json.loads(dry.stdout[dry.stdout.index("{"):])
    cfg = plan["config"]
    assert cfg["diversity_loss_weight"] == 0.01 and cfg["b_dec_init"] == "mean"
    assert cfg["layers"] == [1] and cfg["model"] == str(tiny_llama_dir)
    assert cfg["dataset"] == str(text_corpus) and cfg["top_k"] == 8 and cfg["auxk_alpha"] == 0

    fixed = tmp_path / "fixed"
    result = runner.invoke(app, ["train", "--from-prescription", str(report), "--out",
                                 str(fixed), "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    from saedoctor.sae.loaders import load_sae

    trainer = load_sae(fixed / "L1-resid_post-topk-x2-k8").cfg.metadata["trainer"]
    assert trainer["diversity_loss_weight"] == 0.01 and trainer["b_dec_init"] == "mean"


def test_prescriptions_map_onto_the_config() -> None:
    cfg = TrainConfig(architecture="relu", l1_penalty=2.0, expansion_factor=8, layers=[22])
    new, changes, skipped = apply_prescriptions(cfg, [
        {"field": "architecture", "old": "relu", "new": "topk", "why": "dead"},
        {"field": "expansion_factor", "old": 8, "new": 4, "why": "dead"},
        {"field": "layer", "old": 22, "new": 16, "why": "late layers"},
        {"field": "dataset", "old": "a", "new": "python-code@train", "why": "mismatch"},
        {"field": "expansion_factor", "old": 4, "new": 0.5, "why": "a bad rule"},
    ], "test")  # fmt: skip
    assert new.architecture == "topk" and new.l1_penalty == 0.0  # TopK needs no L1
    assert new.expansion_factor == 4 and new.layers == [16]
    assert new.dataset == "python-code@train"
    assert [c.field for c in changes] == ["architecture", "l1_penalty", "expansion_factor",
                                          "layer", "dataset"]  # fmt: skip
    assert changes[3].old == 22
    assert skipped and skipped[0][0] == "expansion_factor" and ">= 1" in skipped[0][1]


def test_config_is_rebuilt_for_saes_saedoctor_did_not_train() -> None:
    entry = {
        "name": "other",
        "config": {"architecture": "topk", "d_in": 576, "d_sae": 4608, "k": 32,
                   "model_name": "SmolLM2-135M-Instruct",
                   "metadata": {"training_corpus": "python-docs@train", "context": 128,
                                "training_tokens": 498_688,
                                "trainer": {"name": "saedoctor.quick_topk", "k": 32,
                                            "batch_tokens": 1024, "auxk_alpha": 0.03125,
                                            "dead_tokens_threshold": 100_000, "lr": 3e-4}}},
        "site": {"layer": 10, "kind": "resid_post"},
    }  # fmt: skip
    cfg = base_config(entry, {})
    assert (cfg.architecture, cfg.expansion_factor, cfg.top_k, cfg.layers) == ("topk", 8, 32,
                                                                              [10])  # fmt: skip
    assert cfg.batch_size == 8 and cfg.learning_rate == 3e-4
    assert cfg.training_tokens == 498_688 and cfg.model == "SmolLM2-135M-Instruct"
    plans = plan_from_document({"run": {}, "saes": [
        {**entry, "prescriptions": [{"field": "top_k", "old": 32, "new": 64, "why": "x"}]}]})
    assert plans[0].config.top_k == 64 and plans[0].base.top_k == 32
    gated = {**entry, "config": {**entry["config"], "architecture": "gated"}}
    from saedoctor.errors import InputError

    with pytest.raises(InputError, match="gated"):
        base_config(gated, {})
