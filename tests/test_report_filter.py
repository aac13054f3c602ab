"""`saedoctor filter`: always-on features per hook with their densities (saedoctor.filter/2),
never a cross-layer union of ids (docs/circuit_tracing.md)."""

from __future__ import annotations

import json

from saedoctor import always_on_filter as public_filter
from saedoctor.report.filter import always_on_filter
from test_report_data import finllama, finllama_dressed, goodfire, llama_sweep, sample_like


def test_filter_keeps_ids_with_their_layer() -> None:
    result = always_on_filter(llama_sweep())
    assert result["schema"] == "saedoctor.filter/2" and result["model"] == "Llama-2-7B"
    assert "all_features" not in result  # 294 of layer 22 is not 294 of layer 28
    assert result["always_on"]["blocks.22.hook_resid_post"] == {
        "layer": 22, "site": "resid_post", "sae": "llama-2-7b-L22:blocks.22.hook_resid_post",
        # the guide gives no densities for Llama-2-7B: null, never a made-up number
        "features": [{"id": 290, "density": None}, {"id": 294, "density": None}]}
    per_layer = {v["layer"]: [f["id"] for f in v["features"]]
                 for v in result["always_on"].values()}
    assert per_layer == {4: [25], 10: [389], 16: [214], 22: [290, 294], 28: [134, 294]}
    assert result["threshold"] == 0.8
    assert public_filter(llama_sweep()) == result
    json.dumps(result)  # plain JSON for other tools


def test_densities_come_from_the_report() -> None:
    dressed = always_on_filter(finllama_dressed())["always_on"]["finllama"]
    # feature_density[389] of the (invented) density vector, and the guide's 86-94 % spread
    assert dressed["features"] == [{"id": 389, "density": 0.912, "density_range": [0.86, 0.94]}]
    document = finllama_dressed()
    document["saes"][0]["feature_density"] = []  # no vector: the explanation's density
    assert always_on_filter(document)["always_on"]["finllama"]["features"][0]["density"] == 0.912
    guide_only = always_on_filter(finllama())["always_on"]["finllama"]
    assert guide_only["features"] == [{"id": 389, "density": None, "density_range": [0.86, 0.94]}]
    assert guide_only["layer"] is None  # the guide gives no layer: keyed by the SAE's name


def test_filter_lists_clean_saes_and_falls_back_to_names() -> None:
    assert always_on_filter(goodfire())["always_on"]["goodfire"]["features"] == []
    cached = sample_like()
    cached["saes"][0]["site"] = None
    cached["run"]["model"] = None
    result = always_on_filter(cached)
    name = cached["saes"][0]["name"]
    assert result["always_on"][name] == {"layer": None, "site": None, "sae": name, "features": []}
    assert result["model"] == "SmolLM2-135M-Instruct"  # from the SAE config


def test_two_saes_on_one_hook_stay_apart() -> None:
    document = llama_sweep()
    twin = json.loads(json.dumps(document["saes"][1]))
    twin["name"] = "other-L10:blocks.10.hook_resid_post"
    twin["metrics"]["always_on_features"] = [7]
    document["saes"].append(twin)
    result = always_on_filter(document)["always_on"]
    assert [f["id"] for f in result["blocks.10.hook_resid_post"]["features"]] == [389]
    assert [f["id"] for f in result[twin["name"]]["features"]] == [7]


def test_the_filter_carries_each_feature_dense_latent_class() -> None:
    # invented entry: two always-on features, one classified as a position latent
    entry = {"name": "s", "site": {"hook_name": "blocks.3.hook_resid_post", "layer": 3,
                                   "kind": "resid_post"},
             "metrics": {"always_on_features": [4, 9]}, "feature_density": [0.0] * 4 + [0.9]
             + [0.0] * 4 + [0.85],
             "dense_latents": [{"feature": 4, "density": 0.9, "class": "position",
                                "evidence": {}},
                               {"feature": 9, "density": 0.85, "class": None, "evidence": {}}]}
    document = {"run": {"options": {}}, "saes": [entry]}
    features = always_on_filter(document)["always_on"]["blocks.3.hook_resid_post"]["features"]
    assert features == [{"id": 4, "density": 0.9, "class": "position"},
                        {"id": 9, "density": 0.85, "class": None}]
    del entry["dense_latents"]  # an older report: no class key at all
    features = always_on_filter(document)["always_on"]["blocks.3.hook_resid_post"]["features"]
    assert features == [{"id": 4, "density": 0.9}, {"id": 9, "density": 0.85}]
