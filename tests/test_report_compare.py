"""`saedoctor compare`: the guide's layer-by-layer table and model-vs-model comparison."""

from __future__ import annotations

import pytest

import guide_models
from saedoctor.errors import InputError
from saedoctor.report.compare import (
    compare_reports,
    render_compare_html,
    render_compare_markdown,
    render_compare_terminal,
)
from test_report_data import finllama, goodfire, llama_sweep, sample_like

GUIDE_STATUS = [  # the guide's Status column: high dead / always-on / multiple / poor recon.
    "poor: high dead features", "good: always-on feature", "good: always-on feature",
    "poor: multiple always-on features", "poor: poor reconstruction",
]


def test_layer_table_follows_the_guide() -> None:
    comparison = compare_reports([llama_sweep()], ["llama.json"])
    rows = comparison["layer_table"]
    assert [r["layer"] for r in rows] == [4, 10, 16, 22, 28]
    for row, (layer, given) in zip(rows, guide_models.LLAMA_LAYERS.items(), strict=True):
        assert row["layer"] == layer
        assert row["always_on_features"] == given["always_on_features"].value
        assert row["loss_recovered"] == given["loss_recovered"].value
        assert row["loss_recovered_source"] == "loss_recovered"
        assert row["l0"] == given["l0"].value and row["dead_pct"] == given["dead_pct"].value
    assert [r["status"] for r in rows] == GUIDE_STATUS


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


@pytest.mark.parametrize("build", [llama_sweep, finllama, goodfire])
def test_the_fixtures_independent_grading_equals_the_grader(build) -> None:
    """test_report_data grades by its own restatement of SPEC §3: it must agree."""
    from saedoctor.health.grading import grade_entry
    from saedoctor.health.policy import load_policy

    for entry in build()["saes"]:
        real = grade_entry(entry, load_policy())
        assert {k: v["status"] for k, v in real["statuses"].items()} == \
            {k: v["status"] for k, v in entry["grading"]["statuses"].items()}
        assert real["grade"] == entry["grading"]["grade"]


def test_layer_order_is_by_layer_not_by_input_order() -> None:
    document = llama_sweep()
    document["saes"].reverse()
    rows = compare_reports([document], ["r.json"])["layer_table"]
    assert [r["layer"] for r in rows] == [4, 10, 16, 22, 28]


def guide_comparison() -> dict:
    return compare_reports([llama_sweep(), finllama(), goodfire()],
                           ["llama.json", "fin.json", "gf.json"])


def test_model_vs_model() -> None:
    comparison = guide_comparison()
    models = {m["model"]: m for m in comparison["models"]}
    assert list(models) == ["Llama-2-7B", "FinLlama", "Goodfire"]
    llama = models["Llama-2-7B"]
    assert llama["always_on_total"] == 7 and llama["layers"] == [4, 10, 16, 22, 28]
    assert "always_on_features" not in llama  # no cross-layer union of ids
    assert [(i["layer"], [f["id"] for f in i["features"]]) for i in llama["always_on_per_layer"]] \
        == [(4, [25]), (10, [389]), (16, [214]), (22, [290, 294]), (28, [134, 294])]
    assert llama["absorption_range"] == list(guide_models.LLAMA_ABSORPTION_RANGE.value)
    assert llama["diversity_range"] == [10.0, 10.0]
    assert llama["mean_dead_pct"] == pytest.approx((28.25 + 1.00) / 5)
    assert llama["grades"] == {"excellent": 0, "good": 2, "poor": 3, "not graded": 0}
    fin = models["FinLlama"]
    assert fin["mean_l0"] == 856.27 and fin["mean_reconstruction"] is None
    assert fin["always_on_per_layer"][0]["features"] == [
        {"id": 389, "density": None, "density_range": [0.86, 0.94]}]
    assert models["Goodfire"]["always_on_total"] == 0
    assert models["Goodfire"]["grades"]["excellent"] == 1
    assert models["Goodfire"]["absorption_range"] is None
    assert len(comparison["saes"]) == 7


def test_verdicts_are_the_guides() -> None:
    models = {m["model"]: m for m in guide_comparison()["models"]}
    assert {name: m["verdict"] for name, m in models.items()} == {
        model.name.value: model.verdict.value for model in guide_models.GUIDE_MODELS}
    assert models["Llama-2-7B"]["best"] == "layer 10"  # the guide: "Layer 10 is best"
    assert models["Llama-2-7B"]["reason"].startswith(
        "always-on features in every SAE (1–2 each): layers 4, 10, 16, 22, 28")
    assert "L0 856.27 at finllama, dead features 78.26% at finllama" in \
        models["FinLlama"]["reason"]
    assert "not measured: loss recovered, L0, dead features, absorption" in \
        models["Goodfire"]["reason"]


def test_ungraded_reports_get_no_verdict() -> None:
    (model,) = compare_reports([sample_like()], ["s.json"])["models"]
    assert model["verdict"] == "not measured" and model["best"] is None


def test_rendered_comparison_contains_every_table_and_the_verdicts() -> None:
    comparison = guide_comparison()
    md = render_compare_markdown(comparison)
    assert "## SAEs side by side" in md and "## Model vs model" in md
    assert "| Llama-2-7B | 22 | resid_post | Features 290, 294 | 66.24% | 94.33 | 0.00% |" in md
    assert "0.2324 (0.196–0.269)" in md and "2 good, 3 poor" in md
    assert "### FinLlama: ❌ critical issue" in md
    assert "### Llama-2-7B: ⚠️ mild issue" in md and "### Goodfire: ✅ healthy" in md
    assert "- **always-on features**: finllama: 389 (86–94%)" in md
    assert "- **always-on features**: layer 4: 25; layer 10: 389; layer 16: 214; " \
        "layer 22: 290, 294; layer 28: 134, 294" in md
    assert "- **absorption**: 0.196–0.269" in md
    html = render_compare_html(comparison)
    assert html.count('class="sd-plot ') == 1 and "Model vs model" in html


def test_markdown_and_html_show_the_same_model_block() -> None:
    from html import escape

    from saedoctor.report.compare_tables import model_blocks

    comparison = guide_comparison()
    md, html = render_compare_markdown(comparison), render_compare_html(comparison)
    for block in model_blocks(comparison):
        assert escape(block.verdict.text) in html and block.verdict.text in md
        for label, text in block.lines:
            assert f"<li><b>{escape(label)}</b>: {escape(text)}</li>" in html
            assert f"- **{label}**: {text}" in md


def test_terminal_comparison() -> None:
    from rich.console import Console

    console = Console(record=True, width=220)
    render_compare_terminal(compare_reports([llama_sweep(), goodfire()], ["a", "b"]), console)
    text = console.export_text()
    assert "layer-by-layer summary" in text and "model vs model" in text
    assert "Features 134, 294" in text and "Goodfire: ✅ healthy" in text
    assert "Llama-2-7B: ⚠️ mild issue" in text
    assert "note (a, b): Constructed from the published figures" in text


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
    bad["saes"][0]["metrics"]["diversity_top10"] = "lots"
    with pytest.raises(InputError, match=r"^bad.json: invalid report at \$.saes\[0\]"):
        compare_reports([bad], ["bad.json"])
