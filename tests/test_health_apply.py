"""apply_health on whole report documents: a real run's report (trimmed) and sparse ones."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from saedoctor.health import apply_health, load_policy, merge_prescriptions
from test_health_entries import guide_layer_entries, make_entry

POLICY = load_policy()


def sample_run() -> dict[str, Any]:
    """A real `saedoctor diagnose` report (SmolLM2 layer 10, quick TopK SAE), its per-feature
    arrays cut to 4 values and its grading still empty."""
    return {
        "schema": "saedoctor.report/1",
        "run": {
            "created": "2026-11-26T15:07:19Z",
            "versions": {"saedoctor": "0.1.0", "python": "3.11.7"},
            "options": {"corpus": "python-docs@test", "always_on_threshold": 0.8, "seed": 0},
            "corpus": "python-docs@test",
            "activations_file": None,
            "seed": 0,
            "wall_time_s": 114.274,
            "model": {"name": "SmolLM2-135M-Instruct", "n_layers": 30, "d_model": 576},
            "tokens_processed": 61184,
            "tokens_counted": 59796,
            "sequences": 478,
        },
        "saes": [
            {
                "name": "L10-resid_post-topk-x8-k32:blocks.10.hook_resid_post",
                "path": "/tmp/demo_cache/saes/SmolLM2-135M-Instruct/L10-resid_post-topk-x8-k32",
                "config": {
                    "architecture": "topk",
                    "d_in": 576,
                    "d_sae": 4608,
                    "k": 32,
                    "apply_b_dec_to_input": True,
                    "dtype": "float32",
                    "model_name": "SmolLM2-135M-Instruct",
                    "metadata": {
                        "trainer": {
                            "name": "saedoctor.quick_topk",
                            "b_dec_init": "mean",
                            "expansion_factor": 8,
                            "k": 32,
                            "learning_rate": None,
                            "batch_tokens": 1024,
                            "shuffle_tokens": 32768,
                            "auxk_alpha": 0.03125,
                            "dead_tokens_threshold": 100000,
                            "seed": 0,
                            "lr": 0.0003771236166328254,
                        },
                        "training_tokens": 498688,
                        "training_corpus": "python-docs@train",
                        "context": 128,
                        "source_format": "native",
                    },
                },
                "site": {
                    "layer": 10,
                    "kind": "resid_post",
                    "hook_name": "blocks.10.hook_resid_post",
                    "description": "blocks.10.hook_resid_post (block 10 resid_post)",
                },
                "metrics": {
                    "always_on_features": [],
                    "always_on_count": 0,
                    "dense_count": 3,
                    "dead_count": 351,
                    "dead_pct": 7.6171875,
                    "never_fired_count": 3,
                    "tokens_seen": 59796,
                    "l0": 32.0,
                    "diversity_top10": 7.535564853556485,
                    "sequences_seen": 478,
                    "variance_explained": 0.7805761327189356,
                    "fvu": 0.21942386728106444,
                    "variance_explained_legacy": 0.7981926878278938,
                    "mse": 1900.1984420261742,
                    "cossim": 0.954264122058185,
                    "l2_ratio": 0.955974554905461,
                    "relative_reconstruction_bias": 1.0009688795925917,
                    "absorption": 0.19615003573197917,
                    "absorption_method": "decoder_cosine_exact_chunked",
                    "absorption_features": 4257,
                },
                "not_measured": {
                    "loss_recovered": "downstream loss metrics are not measured by this version",
                    "kl_score": "downstream loss metrics are not measured by this version",
                },
                "grading": None,
                "diagnoses": [],
                "prescriptions": [],
                "always_on_explanations": [],
                "density_histogram": {
                    "scale": "log10",
                    "edges": [-8.0],
                    "counts": [],
                    "never_fired": 3,
                },
                "feature_density": [0.00276, 0.000217, 0.00687, 0.0115],
                "feature_mean_activation": [7.48, 3.29, 9.03, 9.92],
            }
        ],
    }


def test_sample_run() -> None:
    doc = sample_run()
    before = copy.deepcopy(doc)
    assert apply_health(doc, POLICY) is doc
    entry = doc["saes"][0]
    grading = entry["grading"]
    assert grading["grade"] == "good"
    assert grading["held_back_by"] == ["diversity_top10", "loss_recovered"]
    assert grading["statuses"]["loss_recovered"] == {
        "value": 0.7805761327189356,
        "status": "good",
        "source": "variance_explained",
    }
    assert grading["statuses"]["always_on_count"]["status"] == "excellent"
    assert grading["statuses"]["dead_pct"]["status"] == "excellent"
    assert grading["statuses"]["absorption"]["status"] == "excellent"
    assert grading["not_measured_metrics"] == []
    # Good but healthy everywhere: nothing fires, nothing to prescribe.
    assert entry["diagnoses"] == [] and entry["prescriptions"] == []
    assert doc["sweep"] == {"diagnoses": [], "best": None}
    assert doc["run"]["policy"]["name"] == "default"
    assert doc["run"]["policy"]["bands"]["dead_pct"]["critical"] == ["> 50"]
    # Everything else is untouched, and the result is plain JSON.
    for key in ("feature_density", "metrics", "config", "not_measured"):
        assert entry[key] == before["saes"][0][key]
    json.dumps(doc, allow_nan=False)


def test_sample_run_with_problems_gets_merged_prescriptions() -> None:
    doc = sample_run()
    entry = doc["saes"][0]
    entry["metrics"].update(dead_pct=55.0, always_on_count=2, always_on_features=[389, 77])
    entry["always_on_explanations"] = [
        {"feature": 389, "density": 0.91, "decoder_cos_with_mean": 0.97, "antipodal_partner": None}
    ]
    apply_health(doc, POLICY)
    assert entry["grading"]["grade"] == "poor"
    assert entry["grading"]["held_back_by"] == ["dead_pct", "always_on_count"]
    assert [d["id"] for d in entry["diagnoses"]] == ["dead_features", "always_on"]
    fields = [p["field"] for p in entry["prescriptions"]]
    assert len(fields) == len(set(fields))
    presc = {p["field"]: p for p in entry["prescriptions"]}
    # Trainer already had AuxK: not prescribed again. old values come from the trainer config.
    assert "auxk_alpha" not in presc
    assert (presc["expansion_factor"]["old"], presc["expansion_factor"]["new"]) == (8, 4)
    # Measured not to help (docs/prescriptions.md): doubled tokens, a diversity loss.
    assert "training_tokens" not in presc and "diversity_loss_weight" not in presc
    # The quick trainer starts b_dec at the data mean: the geometric median comes next.
    assert (presc["b_dec_init"]["old"], presc["b_dec_init"]["new"]) == ("mean", "geometric_median")
    json.dumps(doc, allow_nan=False)


def test_merge_keeps_the_most_severe_value_per_field() -> None:
    def d(severity: str, new: int) -> dict[str, Any]:
        p = {"field": "expansion_factor", "old": 8, "new": new, "why": severity}
        return {"id": severity, "severity": severity, "prescriptions": [p]}

    merged = merge_prescriptions([d("info", 16), d("critical", 4), d("warning", 2)])  # type: ignore[arg-type]
    assert merged == [{"field": "expansion_factor", "old": 8, "new": 4, "why": "critical"}]


def test_sweep_document() -> None:
    doc = {"schema": "saedoctor.report/1", "run": {}, "saes": guide_layer_entries()}
    apply_health(doc, POLICY)
    assert doc["sweep"]["best"] == "llama-2-7b-L10"
    assert [d["id"] for d in doc["sweep"]["diagnoses"]] == [
        "late_layer_reconstruction",
        "best_layer",
    ]
    l28 = doc["saes"][-1]
    assert {d["id"] for d in l28["diagnoses"]} == {"always_on", "poor_reconstruction"}


def test_sparse_documents() -> None:
    bare = {"saes": [{}, {"name": "x", "metrics": {"l0": None}}, make_entry("y")]}
    apply_health(bare, POLICY)
    assert [e["grading"]["grade"] for e in bare["saes"]] == ["not measured"] * 3
    assert all(e["diagnoses"] == [] for e in bare["saes"])
    assert bare["sweep"] == {"diagnoses": [], "best": None}
    assert bare["run"]["policy"]["name"] == "default"
    empty: dict[str, Any] = {"run": {}, "saes": []}
    assert apply_health(empty, POLICY)["sweep"] == {"diagnoses": [], "best": None}


def test_custom_policy_name_is_recorded(tmp_path: Path) -> None:
    path = tmp_path / "strict.toml"
    path.write_text('[diversity_top10]\nexcellent = ["7..10"]\n', encoding="utf-8")
    doc = apply_health(sample_run(), load_policy(path))
    assert doc["run"]["policy"]["name"] == str(path)
    assert doc["saes"][0]["grading"]["held_back_by"] == ["loss_recovered"]
