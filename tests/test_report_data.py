"""Constructed reports for the report tests (no tests here; other test_report* files import it).

- `llama_sweep()`, `finllama()`, `goodfire()`: the guide's three models exactly as
  tests/guide_models.py tags them (every value the guide's, quoted, or marked invented),
  graded here by an independent restatement of SPEC §3 (`grade`), not by saedoctor's grader.
- `finllama_dressed()`: FinLlama with every optional block a view can draw (explanation
  details, diagnoses, prescriptions, a corpus comparison, a density vector). All of that
  dressing is INVENTED for the renderers to have something to show; none of it is the guide's.
- `sample_like()`: shaped like a real ungraded run of the embedded default SAE.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import guide_models

D_SAE = 512  # INVENTED: dictionary size of the constructed entries (> 389, FinLlama's id)

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
        if key == "loss_recovered" and metrics.get("loss_recovered") is None \
                and metrics.get("variance_explained") is not None:
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


def graded_here(document: dict[str, Any]) -> dict[str, Any]:
    for sae in document["saes"]:
        sae["grading"] = grade(sae["metrics"])
        sae.setdefault("diagnoses", [])
        sae.setdefault("prescriptions", [])
    return document


def llama_sweep() -> dict[str, Any]:
    """The guide's Llama-2-7B layer-by-layer table as one five-SAE report."""
    document = graded_here(guide_models.report(guide_models.LLAMA))
    # INVENTED: a sweep finding written by hand for the views to draw (the real sweep rules
    # are tested in tests/test_health_sweep.py).
    document["sweep"] = {"best": document["saes"][1]["name"], "diagnoses": [{
        "id": "late_layer_reconstruction", "title": "reconstruction collapses in late layers",
        "severity": "warning", "evidence": ["layer 28 recovers 4.87% of the loss"],
        "explanation": "Late layers are harder to reconstruct.",
        "prescriptions": [{"field": "expansion_factor", "old": 8, "new": 16,
                           "why": "more capacity for late layers"}]}]}
    return document


def finllama() -> dict[str, Any]:
    """The guide's failed FinLlama SAE, nothing added."""
    return graded_here(guide_models.report(guide_models.FINLLAMA))


def goodfire() -> dict[str, Any]:
    """The guide's Goodfire SAE: 0 always-on features, diversity 10/10, nothing else."""
    return graded_here(guide_models.report(guide_models.GOODFIRE))


def finllama_dressed() -> dict[str, Any]:
    """FinLlama plus INVENTED dressing for the views (see the module docstring)."""
    document = finllama()
    sae = document["saes"][0]
    density = densities([389], sae["metrics"]["dead_pct"])
    sae["feature_density"], sae["density_histogram"] = density, histogram(density)
    sae["feature_mean_activation"] = [1.0] * D_SAE
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
    sae["always_on_explanations"][0].update({
        "density": 0.912, "mean_activation": 3.2, "decoder_cos_with_mean": 0.97,
        "is_bias_direction": True, "reconstruction_share": 0.21,
        "antipodal_partner": {"feature": 77, "encoder_cos": -0.95},
        "strongest_tokens": [{"token": "<script>", "context": "x", "activation": 9.1}],
        "weakest_tokens": [{"token": "|", "context": "y", "activation": 0.0}]})
    compare_metrics = dict(sae["metrics"], variance_explained=0.40, l0=900.0)
    sae["corpus_comparison"] = {
        "corpus": "financial@test", "tokens_counted": 50000, "metrics": compare_metrics,
        "deltas": {"variance_explained": -0.12, "l0": 43.73}, "density_jsd": 0.31,
        "appeared": [1, 2, 3], "disappeared": [4, 5]}
    document["run"]["compare_corpus"] = "financial@test"
    return document


# --- INVENTED filler for entries that need a whole density vector ------------------------
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
    """A density per feature: the given always-on ids at 0.912, dead_pct % below 0.05 %."""
    n_dead = round(D_SAE * dead_pct / 100)
    out = []
    for i in range(D_SAE):
        if i in always_on:
            out.append(0.912)
        elif i < n_dead:
            out.append(0.0 if i % 5 == 0 else 10 ** (-4 - (i % 7) / 3))
        else:
            out.append(10 ** (-3 + 2.2 * ((i * 37) % 101) / 101))
    return out


def sample_like() -> dict[str, Any]:
    """Shaped like a real ungraded run of the embedded default SAE: variance explained,
    diversity, dead %, L0 and absorption as in docs/report.md's example entry; D_SAE, the
    density vector, MSE, cosine and the other reconstruction details are INVENTED filler."""
    density = densities([], 7.6171875)
    ve = 0.7805761327189356
    metrics = {
        "always_on_features": [], "always_on_count": 0, "dense_count": 2,
        "dead_count": round(D_SAE * 7.6171875 / 100), "dead_pct": 7.6171875,
        "never_fired_count": sum(1 for d in density if d == 0), "tokens_seen": 60000,
        "sequences_seen": 480, "l0": 32.0, "diversity_top10": 7.535564853556485,
        "variance_explained": ve, "fvu": 1 - ve, "variance_explained_legacy": ve + 0.01,
        "mse": 1900.0, "cossim": 0.95, "l2_ratio": 0.96, "relative_reconstruction_bias": 1.0,
        "absorption": 0.19615003573197917, "absorption_method": "decoder_cosine_exact_chunked",
        "absorption_features": D_SAE,
    }
    sae = {
        "name": "L10-resid_post-topk-x8-k32:blocks.10.hook_resid_post",
        "path": "/saes/L10-resid_post-topk-x8-k32",
        "config": {"architecture": "topk", "d_in": 576, "d_sae": D_SAE, "k": 32,
                   "apply_b_dec_to_input": True, "dtype": "float32",
                   "model_name": "SmolLM2-135M-Instruct",
                   "metadata": {"training_corpus": "python-docs@train",
                                "training_tokens": 498688}},
        "site": {"layer": 10, "kind": "resid_post", "hook_name": "blocks.10.hook_resid_post",
                 "description": "blocks.10.hook_resid_post (block 10 resid_post = HF "
                                "hidden_states[11])"},
        "metrics": metrics,
        "not_measured": {"loss_recovered": "no language model", "kl_score": "no language model"},
        "grading": None, "diagnoses": [], "prescriptions": [], "always_on_explanations": [],
        "corpus_comparison": None, "density_histogram": histogram(density),
        "feature_density": density, "feature_mean_activation": [1.0] * D_SAE,
    }
    run = {
        "created": "2026-11-26T15:07:19Z",
        "versions": {"saedoctor": "0.1.0", "torch": "2.13.0", "python": "3.11.7"},
        "options": {"always_on_threshold": 0.8, "seed": 0},
        "model": {"name": "SmolLM2-135M-Instruct", "n_layers": 30, "d_model": 576},
        "corpus": "python-docs@test", "compare_corpus": None, "activations_file": None,
        "seed": 0, "wall_time_s": 12.5, "tokens_processed": 61184, "tokens_counted": 60000,
        "sequences": 480,
    }
    return {"schema": "saedoctor.report/1", "run": run, "saes": [sae]}


def fresh(document: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(document)
