"""Sweep rules: the late-layer reconstruction pattern and the best layer, on the guide's table."""

from __future__ import annotations

from typing import Any

import pytest

from saedoctor.health import diagnose_sweep, load_policy
from test_health_entries import guide_layer_entries, make_entry

POLICY = load_policy()


def sweep(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return diagnose_sweep(entries, {"corpus": "wikitext"}, POLICY)


def ids(result: dict[str, Any]) -> dict[str, dict]:
    return {d["id"]: d for d in result["diagnoses"]}


def recon_sweep(values: list[float | None], layers: list[int] | None = None) -> list[dict]:
    layers = layers or [4 * i for i in range(len(values))]
    return [
        make_entry(f"L{la}", layer=la, loss_recovered=v)
        for la, v in zip(layers, values, strict=True)
    ]


def test_guide_sweep_late_layer_pattern() -> None:
    d = ids(sweep(guide_layer_entries()))["late_layer_reconstruction"]
    assert d["severity"] == "critical"
    assert d["title"] == "loss recovered falls with depth: layer 28 at 4.87%"
    assert "layer 4: 98.42% → layer 10: 96.84%" in d["evidence"][0]
    assert "layer 28: 4.87%" in d["evidence"][0]
    [p] = d["prescriptions"]
    assert (p["field"], p["old"], p["new"]) == ("layer", 28, 16)


def test_guide_sweep_best_is_layer_10() -> None:
    result = sweep(guide_layer_entries())
    assert result["best"] == "llama-2-7b-L10"
    d = ids(result)["best_layer"]
    assert d["title"] == "best: layer 10"
    assert d["evidence"][0] == (
        "layer 10 beats layer 16 on reconstruction: loss recovered 96.84% vs loss recovered 90.02%"
    )
    assert d["evidence"][1].startswith("layer 10 (best): grade good, 1 always-on")
    # Layer 4 reconstructs best of all but its dead features make it poor.
    assert d["evidence"][3].startswith("layer 4: grade poor")


def test_sweep_diagnoses_are_ordered_and_order_independent() -> None:
    entries = guide_layer_entries()
    forward, backward = sweep(entries), sweep(entries[::-1])
    assert forward["best"] == backward["best"]
    assert [d["id"] for d in forward["diagnoses"]] == ["late_layer_reconstruction", "best_layer"]


@pytest.mark.parametrize(
    "values",
    [
        [0.98, 0.40],  # two layers: no trend to speak of
        [0.40, 0.70, 0.95],  # rises with depth
        [0.98, 0.95, 0.85],  # falls but the deepest is excellent
        [0.90, 0.30, 0.55],  # the deepest is not the lowest
        [0.98, None, None, 0.40],  # only two measured layers
    ],
)
def test_late_layer_near_miss(values: list[float | None]) -> None:
    assert "late_layer_reconstruction" not in ids(sweep(recon_sweep(values)))


def test_late_layer_tolerates_one_bump() -> None:
    d = ids(sweep(recon_sweep([0.95, 0.97, 0.80, 0.45])))["late_layer_reconstruction"]
    assert d["prescriptions"][0]["new"] == 8  # deepest layer still good or better (0.80 at 8)


def test_late_layer_never_mixes_loss_recovered_with_variance_explained() -> None:
    entries = recon_sweep([0.98, 0.97]) + [
        make_entry("L8", layer=8, variance_explained=0.30),
        make_entry("L12", layer=12, variance_explained=0.20),
    ]
    assert "late_layer_reconstruction" not in ids(sweep(entries))


def test_late_layer_on_variance_explained_says_so() -> None:
    entries = [
        make_entry(f"L{la}", layer=la, variance_explained=v)
        for la, v in ((2, 0.9), (10, 0.7), (20, 0.3))
    ]
    d = ids(sweep(entries))["late_layer_reconstruction"]
    assert d["title"].startswith("variance explained falls with depth")


def test_single_sae_has_no_best() -> None:
    result = sweep(guide_layer_entries()[:1])
    assert result == {"diagnoses": [], "best": None}


def test_nothing_measured_has_no_best() -> None:
    assert sweep([make_entry("a"), make_entry("b")])["best"] is None


def test_best_prefers_measured_and_labels_by_name_when_layers_repeat() -> None:
    entries = [
        make_entry("a", layer=6, l0=900.0),
        make_entry("b", layer=6, l0=50.0, always_on_count=0),
        make_entry("c", layer=6),
    ]
    result = sweep(entries)
    assert result["best"] == "b"
    d = ids(result)["best_layer"]
    assert d["title"] == "best: b"
    assert d["evidence"][0].startswith("b beats a on grade: excellent vs poor")


def test_best_tie_breaks_on_dead_features() -> None:
    entries = [
        make_entry("x", layer=1, always_on_count=0, loss_recovered=0.9, dead_pct=10.0),
        make_entry("y", layer=2, always_on_count=0, loss_recovered=0.9, dead_pct=2.0),
    ]
    result = sweep(entries)
    assert result["best"] == "y"
    assert "on dead features: 2.00% vs 10.00%" in ids(result)["best_layer"]["evidence"][0]
