"""`saedoctor filter`: always-on ids per hook, the guide's "Filter Always-On Features"."""

from __future__ import annotations

import json

from saedoctor.report.filter import always_on_filter
from test_report_data import goodfire, llama_sweep, sample_like


def test_filter_matches_the_guide_snippet() -> None:
    result = always_on_filter(llama_sweep())
    assert result["schema"] == "saedoctor.filter/1" and result["model"] == "Llama-2-7B"
    assert result["always_on"]["blocks.22.hook_resid_post"] == {
        "layer": 22, "site": "resid_post", "features": [290, 294]}
    assert result["all_features"] == [25, 134, 214, 290, 294, 389]  # the guide's set
    assert result["threshold"] == 0.8
    json.dumps(result)  # plain JSON for other tools


def test_filter_lists_clean_saes_and_falls_back_to_names() -> None:
    document = goodfire()
    assert always_on_filter(document)["always_on"]["blocks.19.hook_resid_post"]["features"] == []
    cached = sample_like()
    cached["saes"][0]["site"] = None
    cached["run"]["model"] = None
    result = always_on_filter(cached)
    name = cached["saes"][0]["name"]
    assert result["always_on"][name] == {"layer": None, "site": None, "features": []}
    assert result["model"] == "SmolLM2-135M-Instruct"  # from the SAE config
