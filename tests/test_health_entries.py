"""Report entries for the health tests: a builder, and the guide's own figures as data.

Other test_health_* modules import from here (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

from typing import Any

from saedoctor.health import grade_entry, load_policy


def make_entry(
    name: str = "sae",
    *,
    layer: int | None = None,
    architecture: str | None = "topk",
    d_in: int = 576,
    d_sae: int = 4608,
    k: int | None = 32,
    trainer: dict[str, Any] | None = None,
    training_corpus: str | None = None,
    training_tokens: int | None = None,
    not_measured: dict[str, str] | None = None,
    always_on_explanations: list[dict[str, Any]] | None = None,
    corpus_comparison: dict[str, Any] | None = None,
    **metrics: Any,
) -> dict[str, Any]:
    """A SAE_ENTRY of docs/report.md holding only what the test gives."""
    metadata: dict[str, Any] = {}
    if trainer is not None:
        metadata["trainer"] = trainer
    if training_corpus is not None:
        metadata["training_corpus"] = training_corpus
    if training_tokens is not None:
        metadata["training_tokens"] = training_tokens
    entry: dict[str, Any] = {
        "name": name,
        "config": {
            "architecture": architecture,
            "d_in": d_in,
            "d_sae": d_sae,
            "k": k,
            "metadata": metadata,
        },
        "site": None if layer is None else {"layer": layer, "kind": "resid_post"},
        "metrics": metrics,
        "not_measured": not_measured or {},
        "grading": None,
        "diagnoses": [],
        "prescriptions": [],
        "always_on_explanations": always_on_explanations or [],
    }
    if corpus_comparison is not None:
        entry["corpus_comparison"] = corpus_comparison
    return entry


# The guide's "Layer-by-Layer Analysis Summary" (Llama-2-7B), plus "All models: 10/10
# diversity". Absorption is only given as a model-wide range, so it is not per layer here.
GUIDE_LAYERS: list[dict[str, Any]] = [
    {"layer": 4, "always_on": [25], "loss_recovered": 0.9842, "l0": 61.37, "dead_pct": 28.25},
    {"layer": 10, "always_on": [389], "loss_recovered": 0.9684, "l0": 58.80, "dead_pct": 1.00},
    {"layer": 16, "always_on": [214], "loss_recovered": 0.9002, "l0": 76.38, "dead_pct": 0.00},
    {
        "layer": 22,
        "always_on": [290, 294],
        "loss_recovered": 0.6624,
        "l0": 94.33,
        "dead_pct": 0.00,
    },
    {
        "layer": 28,
        "always_on": [134, 294],
        "loss_recovered": 0.0487,
        "l0": 125.58,
        "dead_pct": 0.00,
    },
]


def guide_layer_entry(row: dict[str, Any]) -> dict[str, Any]:
    return make_entry(
        f"llama-2-7b-L{row['layer']}",
        layer=row["layer"],
        architecture=None,
        k=None,
        always_on_features=row["always_on"],
        always_on_count=len(row["always_on"]),
        loss_recovered=row["loss_recovered"],
        l0=row["l0"],
        dead_pct=row["dead_pct"],
        diversity_top10=10.0,
    )


def guide_layer_entries() -> list[dict[str, Any]]:
    return [guide_layer_entry(row) for row in GUIDE_LAYERS]


def finllama_entry(**extra: Any) -> dict[str, Any]:
    """The guide's FinLlama SAE: feature 389 at 86-94%, absorption 0.265-0.312 (upper end
    here), L0 856.27, 78.26% dead, loss recovery "below thresholds" (0.55 stands in), trained
    on WikiText-103 and evaluated on financial text."""
    return make_entry(
        "finllama",
        architecture="relu",
        k=None,
        training_corpus="wikitext-103",
        always_on_features=[389],
        always_on_count=1,
        absorption=0.312,
        l0=856.27,
        dead_pct=78.26,
        loss_recovered=0.55,
        diversity_top10=10.0,
        **extra,
    )


def goodfire_entry() -> dict[str, Any]:
    return make_entry("goodfire", always_on_features=[], always_on_count=0, diversity_top10=10.0)


def test_guide_entries_grade_without_error() -> None:
    policy = load_policy()
    for entry in guide_layer_entries() + [finllama_entry(), goodfire_entry()]:
        assert grade_entry(entry, policy)["grade"] in ("excellent", "good", "poor")
