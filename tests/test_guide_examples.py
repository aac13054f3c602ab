"""docs/examples/guide/: the guide's three models as reports a user can run `saedoctor compare`
on. The committed files are the script's output, graded by the real grader, every value is
tagged as the guide's or invented, and no verdict rests on an invented value."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import guide_models
from guide_models import GUIDE_MODELS, GuideSAE, Invented

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples" / "guide"
SCRIPT = ROOT / "scripts" / "make_guide_examples.py"
EXPECTED = {model.name.value: model.verdict.value for model in GUIDE_MODELS}


def verdicts(documents: list[dict[str, Any]]) -> dict[str, str]:
    from saedoctor.report.compare import compare_reports

    comparison = compare_reports(documents, [f"r{i}.json" for i in range(len(documents))])
    return {m["model"]: m["verdict"] for m in comparison["models"]}


def test_expected_verdicts_are_the_guides_own() -> None:
    assert EXPECTED == {"Llama-2-7B": "mild issue", "FinLlama": "critical issue",
                        "Goodfire": "healthy"}
    assert all(isinstance(m.verdict, guide_models.Given) for m in GUIDE_MODELS)


def test_committed_files_equal_the_script_output(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], check=True,
                   capture_output=True)
    made = sorted(p.name for p in tmp_path.iterdir())
    assert made == sorted(p.name for p in EXAMPLES.glob("*.json")) == \
        sorted(m.file for m in GUIDE_MODELS)
    for name in made:
        assert (EXAMPLES / name).read_bytes() == (tmp_path / name).read_bytes(), \
            f"{name} is stale: run scripts/make_guide_examples.py"


def test_examples_are_valid_and_graded_by_the_default_policy() -> None:
    from saedoctor.health import grade_entry, load_policy
    from saedoctor.report.document import read_report

    for model in GUIDE_MODELS:
        document = read_report(EXAMPLES / model.file)
        assert document["run"]["policy"]["name"] == "default"
        for entry in document["saes"]:
            assert entry["grading"] == grade_entry(entry, load_policy())


def test_cli_compare_prints_the_three_verdicts() -> None:
    from typer.testing import CliRunner

    from saedoctor.cli import app

    files = [str(EXAMPLES / m.file) for m in GUIDE_MODELS]
    result = CliRunner().invoke(app, ["compare", *files])
    assert result.exit_code == 0, result.output
    for line in ("Llama-2-7B: ⚠️ mild issue", "FinLlama: ❌ critical issue",
                 "Goodfire: ✅ healthy", "finllama: 389 (86–94%)"):
        assert line in result.output, line
    as_json = CliRunner().invoke(app, ["compare", *files, "--json"])
    models = json.loads(as_json.output)["models"]
    assert {m["model"]: m["verdict"] for m in models} == EXPECTED


def test_every_value_is_tagged_as_the_guides_or_invented() -> None:
    for model in GUIDE_MODELS:
        document = json.loads((EXAMPLES / model.file).read_text())
        for entry in document["saes"]:
            given, invented = entry["provenance"]["given"], entry["provenance"]["invented"]
            assert not set(given) & set(invented)
            tagged = set(given) | set(invented)
            assert {f"metrics.{k}" for k in entry["metrics"]} <= tagged
            for i, explanation in enumerate(entry["always_on_explanations"]):
                assert {f"always_on_explanations[{i}].{k}" for k in explanation} <= tagged
            if entry["site"]["layer"] is not None:
                assert "site.layer" in given and "site.kind" in invented
            assert not set(entry["metrics"]) & set(entry["not_measured"])


def test_invented_metrics_are_the_ones_the_guide_does_not_give() -> None:
    invented = {(model.name.value, key) for model in GUIDE_MODELS for sae in model.saes
                for key, value in sae.metrics.items() if isinstance(value, Invented)}
    assert invented == {("Llama-2-7B", "absorption"), ("FinLlama", "absorption")}
    llama = json.loads((EXAMPLES / "llama-2-7b.json").read_text())
    assert all("metrics.absorption" in e["provenance"]["invented"] for e in llama["saes"])
    goodfire = json.loads((EXAMPLES / "goodfire.json").read_text())
    assert not [k for k in goodfire["saes"][0]["provenance"]["invented"] if "metrics" in k]


def test_verdicts_hold_with_every_invented_value_removed() -> None:
    removed = guide_models.example_reports(lambda sae, metric, value: None)
    for document in removed.values():
        assert not [k for e in document["saes"] for k in e["provenance"]["invented"]
                    if k.startswith("metrics.")]
    assert verdicts(list(removed.values())) == EXPECTED


def spread(pick: str, seed: int = 0):
    """Places every invented value at one end of the guide's range, alternately, or at
    random inside it."""
    rng = random.Random(seed)

    def choose(sae: GuideSAE, metric: str, value: Invented) -> float:
        assert value.span is not None, f"{sae.name} {metric}: invented with no stated range"
        low, high = value.span
        if pick == "alternate":
            return low if sum(map(ord, sae.name)) % 2 else high
        return {"low": low, "high": high}.get(pick, rng.uniform(low, high))

    return choose


@pytest.mark.parametrize("pick,seed", [("low", 0), ("high", 0), ("alternate", 0),
                                       *(("random", s) for s in range(5))])
def test_verdicts_hold_wherever_invented_values_sit_in_the_guides_ranges(pick, seed) -> None:
    moved = guide_models.example_reports(spread(pick, seed))
    assert verdicts(list(moved.values())) == EXPECTED


@pytest.mark.parametrize("loss", [0.0, 0.3, 0.5, 0.6, 0.6999])
def test_finllama_stays_critical_at_any_loss_recovered_the_guide_allows(loss: float) -> None:
    """The guide gives FinLlama's loss recovery only as '<70%': any value below stays critical."""
    low, high = guide_models.FINLLAMA_LOSS_BOUND.value
    assert low <= loss < high
    document = guide_models.report(guide_models.FINLLAMA)
    entry = document["saes"][0]
    entry["metrics"]["loss_recovered"] = loss
    del entry["not_measured"]["loss_recovered"]
    assert verdicts([guide_models.graded(document)]) == {"FinLlama": "critical issue"}


def guide_text() -> str:
    """The guide as users bring it (a copy kept with the tests)."""
    return (ROOT / "tests" / "data" / guide_models.GUIDE).read_text(encoding="utf-8")


def plain(text: str) -> str:
    """Without Markdown emphasis, emoji or other non-ASCII marks, whitespace collapsed."""
    return " ".join(text.replace("**", "").encode("ascii", "ignore").decode().split())


def test_every_quote_is_in_the_guide() -> None:
    guide = plain(guide_text())
    wheres = [v.where for v in vars(guide_models).values() if isinstance(v, guide_models.Given)]
    for model in GUIDE_MODELS:
        wheres += [model.name.where, model.verdict.where]
        for sae in model.saes:
            wheres += [v.where for v in sae.metrics.values() if isinstance(v, guide_models.Given)]
            wheres += [sae.layer.where] if sae.layer else []
    quotes = [q for where in wheres for q in re.findall(r'"([^"]+)"', where)]
    assert len(quotes) > 30
    for quote in quotes:
        assert plain(quote) in guide, quote
