"""`saedoctor compare`: the guide's layer-by-layer table and model-vs-model comparison."""

from __future__ import annotations

import pytest

from saedoctor.errors import InputError
from saedoctor.report.compare import (
    compare_reports,
    render_compare_html,
    render_compare_markdown,
    render_compare_terminal,
)
from test_report_data import LLAMA_LAYERS, finllama, goodfire, llama_sweep, sample_like


def test_layer_table_follows_the_guide() -> None:
    comparison = compare_reports([llama_sweep()], ["llama.json"])
    rows = comparison["layer_table"]
    assert [r["layer"] for r in rows] == [4, 10, 16, 22, 28]
    for row, (layer, (ids, recon, l0, dead, _)) in zip(rows, LLAMA_LAYERS.items(), strict=True):
        assert row["layer"] == layer and row["always_on_features"] == ids
        assert row["loss_recovered"] == recon and row["loss_recovered_source"] == "loss_recovered"
        assert row["l0"] == l0 and row["dead_pct"] == dead
    assert [r["status"] for r in rows] == GUIDE_STATUS


GUIDE_STATUS = [  # the guide's Status column: high dead / always-on / multiple / poor recon.
    "poor: high dead features", "good: always-on feature", "good: always-on feature",
    "poor: multiple always-on features", "poor: poor reconstruction",
]


def test_real_grader_output_validates_and_gives_the_guide_statuses() -> None:
    """The contract with saedoctor.health: its grading fills what the renderers read."""
    from saedoctor.health.apply import apply_health
    from saedoctor.health.policy import load_policy
    from saedoctor.report.html import render_html
    from saedoctor.report.markdown import render_markdown
    from saedoctor.report.schema import validate_report

    document = llama_sweep()
    for entry in document["saes"]:
        entry["grading"], entry["diagnoses"], entry["prescriptions"] = None, [], []
    apply_health(document, load_policy())
    validate_report(document, "graded.json")
    rows = compare_reports([document], ["graded.json"])["layer_table"]
    assert [r["status"] for r in rows] == GUIDE_STATUS
    assert "policy: default" in render_html(document)
    assert "## Sweep findings" in render_markdown(document)


def test_layer_order_is_by_layer_not_by_input_order() -> None:
    document = llama_sweep()
    document["saes"].reverse()
    rows = compare_reports([document], ["r.json"])["layer_table"]
    assert [r["layer"] for r in rows] == [4, 10, 16, 22, 28]


def test_model_vs_model() -> None:
    comparison = compare_reports([llama_sweep(), finllama(), goodfire()],
                                 ["llama.json", "fin.json", "gf.json"])
    models = {m["model"]: m for m in comparison["models"]}
    assert list(models) == ["Llama-2-7B", "FinLlama", "Goodfire Llama-3.1-8B"]
    llama = models["Llama-2-7B"]
    assert llama["always_on_total"] == 7 and llama["layers"] == [4, 10, 16, 22, 28]
    assert llama["always_on_features"] == [25, 134, 214, 290, 294, 389]
    assert llama["absorption_range"] == [0.196, 0.269]
    assert llama["mean_dead_pct"] == pytest.approx(29.25 / 5)
    assert llama["grades"] == {"excellent": 0, "good": 2, "poor": 3, "not graded": 0}
    assert models["FinLlama"]["mean_l0"] == 856.27
    assert models["FinLlama"]["mean_absorption"] == 0.312
    assert models["Goodfire Llama-3.1-8B"]["always_on_total"] == 0
    assert models["Goodfire Llama-3.1-8B"]["grades"]["excellent"] == 1
    assert len(comparison["saes"]) == 7


def test_rendered_comparison_contains_all_three_tables() -> None:
    comparison = compare_reports([llama_sweep(), finllama(), goodfire()], ["a", "b", "c"])
    md = render_compare_markdown(comparison)
    assert "## SAEs side by side" in md and "## Model vs model" in md
    assert "| Llama-2-7B | 22 | Features 290, 294 | 66.24% | 94.33 | 0.00% |" in md
    assert "0.2324 (0.196–0.269)" in md and "2 good, 3 poor" in md
    html = render_compare_html(comparison)
    assert html.count('class="sd-plot ') == 1 and "Model vs model" in html


def test_terminal_comparison(capsys: pytest.CaptureFixture[str]) -> None:
    from rich.console import Console

    console = Console(record=True, width=220)
    render_compare_terminal(compare_reports([llama_sweep(), goodfire()], ["a", "b"]), console)
    text = console.export_text()
    assert "layer-by-layer summary" in text and "model vs model" in text
    assert "Features 134, 294" in text and "Goodfire Llama-3.1-8B" in text


def test_same_sae_twice_gets_distinct_columns() -> None:
    comparison = compare_reports([sample_like(), sample_like()], ["docs.json", "code.json"])
    labels = [s["label"] for s in comparison["saes"]]
    assert len(set(labels)) == 2 and "(code.json)" in labels[1]
    assert comparison["layer_table"][0]["loss_recovered_source"] == "variance_explained"


@pytest.mark.parametrize("schema", ["saedoctor.report/2", None])
def test_mismatched_schema_names_the_file(schema: str | None) -> None:
    other = goodfire()
    if schema is None:
        del other["schema"]
    else:
        other["schema"] = schema
    with pytest.raises(InputError, match="^other.json: "):
        compare_reports([llama_sweep(), other], ["llama.json", "other.json"])


def test_invalid_document_is_named() -> None:
    bad = goodfire()
    bad["saes"][0]["metrics"]["dead_pct"] = "lots"
    with pytest.raises(InputError, match=r"^bad.json: invalid report at \$.saes\[0\]"):
        compare_reports([bad], ["bad.json"])
