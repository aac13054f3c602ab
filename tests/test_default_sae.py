"""The shipped default SAE: built by `saedoctor train` with the command in its metadata, and
that command, run again, gives an SAE with the same health within measured tolerances."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from saedoctor import defaults
from saedoctor.sae.loaders import load_sae
from saedoctor.train import default as default_sae

RESULTS = Path(__file__).parent.parent / "benchmarks" / "results" / "default_sae_seeds.json"


def shipped_cfg() -> dict:
    return json.loads((defaults.default_sae_dir() / "cfg.json").read_text(encoding="utf-8"))


def build_record() -> dict:
    return shipped_cfg()["saedoctor"]["metadata"]["build"]


def test_shipped_sae_records_the_command_that_built_it() -> None:
    record = build_record()
    assert record["argv"] == default_sae.train_command()
    assert record["command"] == shlex.join(default_sae.train_command())
    assert record["corpus"] == defaults.DEFAULT_TRAIN_CORPUS
    assert record["stored_dtype"] == "float16"
    trainer = shipped_cfg()["saedoctor"]["metadata"]["trainer"]
    assert trainer["name"] == "saedoctor.train"  # the project's own trainer
    argv = record["argv"]
    flag = {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--")}
    assert trainer["layer"] == int(flag["--layer"]) == defaults.DEFAULT_LAYER
    assert trainer["architecture"] == flag["--architecture"] == "topk"
    assert trainer["top_k"] == int(flag["--top-k"])
    assert trainer["expansion_factor"] == float(flag["--expansion-factor"])
    assert trainer["dataset"] == flag["--dataset"]
    assert trainer["training_tokens"] == int(flag["--tokens"])


def test_shipped_weights_are_half_precision_and_load_widened() -> None:
    weights = defaults.default_sae_dir() / "sae_weights.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
        stored = f.get_tensor("W_dec")
    sae = load_sae(defaults.default_sae_dir())
    assert sae.W_dec.dtype == torch.float32
    assert torch.equal(sae.W_dec.detach(), stored.float())  # widened exactly, never rounded
    assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.k) == (576, 4608, defaults.DEFAULT_K)
    assert sae.site is not None and sae.site.layer == defaults.DEFAULT_LAYER


@pytest.mark.slow
def test_rerunning_the_recorded_command_reproduces_the_shipped_sae(tmp_path: Path) -> None:
    """Retrain with the recorded command and seed, store it as the shipped one is stored, and
    diagnose both in one run: every headline metric lands within the seed-to-seed spread
    measured by benchmarks/default_sae_seeds.py, and the grade is the same."""
    from saedoctor.diagnose import DiagnoseOptions, diagnose

    study = json.loads(RESULTS.read_text(encoding="utf-8"))
    assert study["shipped_command"] == build_record()["command"]
    retrained = default_sae.build_default_sae(tmp_path / "retrained")
    assert load_sae(retrained).cfg.metadata["build"]["command"] == build_record()["command"]
    report = diagnose(DiagnoseOptions(saes=[str(defaults.default_sae_dir()), str(retrained)],
                                      quiet=True))  # fmt: skip
    shipped, again = report["saes"]
    assert again["grading"]["grade"] == shipped["grading"]["grade"]
    for key, tolerance in study["seed_spread"].items():
        if tolerance is None:
            continue
        gap = abs(again["metrics"][key] - shipped["metrics"][key])
        assert gap <= tolerance, f"{key}: retrained off by {gap:.4g} > seed spread {tolerance:.4g}"
