"""Constructed reports for the report tests (no tests here; other test_report* files import it).

Numbers are the guide's: Llama-2-7B's five-layer sweep, FinLlama's failed SAE, Goodfire's
healthy one. Grading follows SPEC §3 defaults, best status first, as the grader does.
"""

from __future__ import annotations

import copy
import math
from typing import Any

D_SAE = 256

LLAMA_LAYERS = {  # layer: (always-on ids, loss recovered, L0, dead %, absorption)
    4: ([25], 0.9842, 61.37, 28.25, 0.196),
    10: ([389], 0.9684, 58.80, 1.00, 0.214),
    16: ([214], 0.9002, 76.38, 0.00, 0.231),
    22: ([290, 294], 0.6624, 94.33, 0.00, 0.252),
    28: ([134, 294], 0.0487, 125.58, 0.00, 0.269),
}


BANDS = {  # SPEC §3 as (excellent, good, warning, critical) predicates, docs/grading.md
    "always_on_count": (lambda v: v == 0, lambda v: 1 <= v <= 2, lambda v: v > 1,
                        lambda v: v > 2),
    "diversity_top10": (lambda v: 8 <= v <= 10, lambda v: v >= 7, lambda v: v < 7,
                        lambda v: v < 5),
    "loss_recovered": (lambda v: v >= 0.8, lambda v: v >= 0.7, lambda v: v < 0.6,
                       lambda v: v < 0.5),
    "l0": (lambda v: 20 <= v <= 200, lambda v: 20 <= v <= 300, lambda v: v < 10 or v > 300,
           lambda v: v < 5 or v > 500),
    "dead_pct": (lambda v: v <= 20, lambda v: v <= 30, lambda v: 20 <= v <= 50,
                 lambda v: v > 50),
    "absorption": (lambda v: v <= 0.25, lambda v: v <= 0.30, lambda v: 0.25 <= v <= 0.35,
                   lambda v: v > 0.35),
}


def spec_status(key: str, v: float | None) -> str:
    """The grader's "worst" rule: a problem band beats a healthy one; gaps are warnings."""
    if v is None:
        return "not measured"
    excellent, good, warning, critical = BANDS[key]
    for status, hit in (("critical", critical), ("warning", warning),
                        ("excellent", excellent), ("good", good)):
        if hit(v):
            return status
    return "warning"


def grade(metrics: dict[str, Any]) -> dict[str, Any]:
    statuses = {}
    for key in BANDS:
        source = key
        if key == "loss_recovered" and metrics.get("loss_recovered") is None:
            source = "variance_explained"
        value = metrics.get(source)
        statuses[key] = {"value": value, "status": spec_status(key, value), "source": source}
    found = {k: s["status"] for k, s in statuses.items() if s["status"] != "not measured"}
    if all(s == "excellent" for s in found.values()):
        return {"statuses": statuses, "grade": "excellent", "held_back_by": []}
    if all(s in ("excellent", "good") for s in found.values()):
        below = [k for k, s in found.items() if s == "good"]
        return {"statuses": statuses, "grade": "good", "held_back_by": below}
    below = [k for k, s in found.items() if s == "critical"]
    below += [k for k, s in found.items() if s == "warning"]
    return {"statuses": statuses, "grade": "poor", "held_back_by": below}


def histogram(density: list[float]) -> dict[str, Any]:
    edges = [-8 + 0.25 * i for i in range(33)]
    counts = [0] * 32
    never = 0
    for d in density:
        if d <= 0:
            never += 1
            continue
        counts[min(31, max(0, int((math.log10(d) + 8) / 0.25)))] += 1
    return {"scale": "log10", "edges": edges, "counts": counts, "never_fired": never}


def densities(always_on: list[int], dead_pct: float) -> list[float]:
    """A density per feature: the given always-on ids near 0.9, dead_pct % below 0.05 %."""
    n_dead = round(D_SAE * dead_pct / 100)
    out = []
    for i in range(D_SAE):
        if i in always_on:
            out.append(0.9)
        elif i < n_dead:
            out.append(0.0 if i % 5 == 0 else 10 ** (-4 - (i % 7) / 3))
        else:
            out.append(10 ** (-3 + 2.2 * ((i * 37) % 101) / 101))
    return out


def entry(name: str, layer: int | None, model: str, *, always_on: list[int], recon: float | None,
          ve: float, l0: float, dead_pct: float, absorption: float | None,
          diversity: float = 10.0, graded: bool = True) -> dict[str, Any]:
    density = densities([i % D_SAE for i in always_on], dead_pct)
    metrics = {
        "always_on_features": always_on, "always_on_count": len(always_on),
        "dense_count": len(always_on) + 2, "dead_count": round(D_SAE * dead_pct / 100),
        "dead_pct": dead_pct, "never_fired_count": sum(1 for d in density if d == 0),
        "tokens_seen": 60000, "sequences_seen": 480, "l0": l0, "diversity_top10": diversity,
        "variance_explained": ve, "fvu": 1 - ve, "variance_explained_legacy": ve + 0.01,
        "mse": 1900.0, "cossim": 0.95, "l2_ratio": 0.96, "relative_reconstruction_bias": 1.0,
        "absorption": absorption, "absorption_method": "decoder_cosine_exact_chunked",
        "absorption_features": D_SAE,
    }
    not_measured = {}
    if recon is None:
        not_measured = {"loss_recovered": "no language model", "kl_score": "no language model"}
    else:
        metrics.update(loss_recovered=recon, ce_clean=2.1, ce_sae=2.3, ce_ablated=9.0)
    site = None if layer is None else {
        "layer": layer, "kind": "resid_post", "hook_name": f"blocks.{layer}.hook_resid_post",
        "description": f"blocks.{layer}.hook_resid_post (block {layer} resid_post = HF "
                       f"hidden_states[{layer + 1}])"}
    return {
        "name": name, "path": f"/saes/{name}",
        "config": {"architecture": "topk", "d_in": 4096, "d_sae": D_SAE, "k": 64,
                   "apply_b_dec_to_input": True, "dtype": "float32", "model_name": model,
                   "metadata": {"training_corpus": "wikitext-103", "training_tokens": 1000000}},
        "site": site, "metrics": metrics, "not_measured": not_measured,
        "grading": grade(metrics) if graded else None,
        "diagnoses": [], "prescriptions": [], "always_on_explanations": [],
        "corpus_comparison": None, "density_histogram": histogram(density),
        "feature_density": density, "feature_mean_activation": [1.0] * D_SAE,
    }


def run(model: str | None, **extra: Any) -> dict[str, Any]:
    return {
        "created": "2026-11-26T15:07:19Z",
        "versions": {"saedoctor": "0.1.0", "torch": "2.13.0", "python": "3.11.7"},
        "options": {"always_on_threshold": 0.8, "seed": 0},
        "model": {"name": model, "n_layers": 32, "d_model": 4096} if model else None,
        "corpus": "wikitext-103@test", "compare_corpus": None, "activations_file": None,
        "seed": 0, "wall_time_s": 12.5, "tokens_processed": 61184, "tokens_counted": 60000,
        "sequences": 480, **extra,
    }


def llama_sweep() -> dict[str, Any]:
    """The guide's Llama-2-7B layer-by-layer table as one five-SAE report."""
    saes = [entry(f"llama2-L{layer}:blocks.{layer}.hook_resid_post", layer, "Llama-2-7B",
                  always_on=ids, recon=recon, ve=recon, l0=l0, dead_pct=dead, absorption=absorb)
            for layer, (ids, recon, l0, dead, absorb) in LLAMA_LAYERS.items()]
    sweep = {"best": saes[1]["name"], "diagnoses": [{
        "id": "late_layer_reconstruction", "title": "reconstruction collapses in late layers",
        "severity": "warning", "evidence": ["layer 28 recovers 4.87% of the loss"],
        "explanation": "Late layers are harder to reconstruct.",
        "prescriptions": [{"field": "expansion_factor", "old": 8, "new": 16,
                           "why": "more capacity for late layers"}]}]}
    return {"schema": "saedoctor.report/1", "run": run("Llama-2-7B"), "saes": saes,
            "sweep": sweep}


def finllama() -> dict[str, Any]:
    """The guide's failed FinLlama SAE, with everything the grader and diagnoser add."""
    sae = entry("finllama-L10:blocks.10.hook_resid_post", 10, "FinLlama", always_on=[389],
                recon=0.45, ve=0.52, l0=856.27, dead_pct=78.26, absorption=0.312)
    rx = {"field": "diversity_loss_weight", "old": 0.0, "new": 0.01,
          "why": "penalise features that fire on every token"}
    sae["diagnoses"] = [{
        "id": "always_on", "title": "1 always-on feature", "severity": "critical",
        "evidence": ["feature 389 fires on 91.2% of tokens",
                     "its decoder row has cosine 0.97 with mean(x)"],
        "explanation": "The feature learned the mean activation <direction> | a bias.",
        "prescriptions": [rx]}]
    sae["prescriptions"] = [rx, {"field": "dataset", "old": None, "new": "financial_corpus",
                                 "why": "train on the evaluation domain"}]
    sae["always_on_explanations"] = [{
        "feature": 389, "density": 0.912, "mean_activation": 3.2, "decoder_cos_with_mean": 0.97,
        "is_bias_direction": True, "reconstruction_share": 0.21,
        "antipodal_partner": {"feature": 77, "encoder_cos": -0.95},
        "strongest_tokens": [{"token": "<script>", "context": "x", "activation": 9.1}],
        "weakest_tokens": [{"token": "|", "context": "y", "activation": 0.0}]}]
    compare_metrics = dict(sae["metrics"], variance_explained=0.40, l0=900.0)
    sae["corpus_comparison"] = {
        "corpus": "financial@test", "tokens_counted": 50000, "metrics": compare_metrics,
        "deltas": {"variance_explained": -0.12, "l0": 43.73}, "density_jsd": 0.31,
        "appeared": [1, 2, 3], "disappeared": [4, 5]}
    return {"schema": "saedoctor.report/1",
            "run": run("FinLlama", compare_corpus="financial@test"), "saes": [sae]}


def goodfire() -> dict[str, Any]:
    sae = entry("goodfire-L19:blocks.19.hook_resid_post", 19, "Goodfire Llama-3.1-8B",
                always_on=[], recon=0.91, ve=0.9, l0=91.0, dead_pct=4.0, absorption=0.18)
    return {"schema": "saedoctor.report/1", "run": run("Goodfire Llama-3.1-8B"), "saes": [sae]}


def sample_like() -> dict[str, Any]:
    """Shaped like a real pre-grading run: VE only, grading null, nothing diagnosed."""
    sae = entry("L10-resid_post-topk-x8-k32:blocks.10.hook_resid_post", 10,
                "SmolLM2-135M-Instruct", always_on=[], recon=None, ve=0.7805761327189356,
                l0=32.0, dead_pct=7.6171875, absorption=0.19615003573197917,
                diversity=7.535564853556485, graded=False)
    return {"schema": "saedoctor.report/1", "run": run("SmolLM2-135M-Instruct"), "saes": [sae]}


def fresh(document: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(document)
