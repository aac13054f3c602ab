"""Each per-SAE diagnosis rule: an entry that fires it, and near misses that must not."""

from __future__ import annotations

from typing import Any

import pytest

from saedoctor.health import diagnose_entry, load_policy
from test_health_entries import finllama_entry, make_entry

POLICY = load_policy()
TOPK_TRAINER = {"name": "saedoctor.quick_topk", "expansion_factor": 8, "k": 32, "lr": 3e-4}
RUN = {"corpus": "python-docs@test", "options": {"always_on_threshold": 0.8}}


def fired(entry: dict[str, Any], run: dict[str, Any] | None = None) -> dict[str, dict]:
    return {d["id"]: d for d in diagnose_entry(entry, POLICY, run or RUN)}


def rx(diagnosis: dict) -> dict[str, dict]:
    """Each prescription by field, without its measured evidence (tests/test_prescription_
    evidence.py checks that): these tests check what the rule itself prescribes."""
    return {p["field"]: {k: v for k, v in p.items() if k != "evidence"}
            for p in diagnosis["prescriptions"]}  # fmt: skip


def text(diagnosis: dict) -> str:
    return " | ".join(diagnosis["evidence"])


# (a) always-on ---------------------------------------------------------------------------


def bias_feature() -> dict[str, Any]:
    return {
        "feature": 389,
        "density": 0.91,
        "mean_activation": 3.2,
        "decoder_cos_with_mean": 0.97,
        "is_bias_direction": True,
        "reconstruction_share": 0.21,
        "antipodal_partner": None,
    }


def pair_feature() -> dict[str, Any]:
    return {
        "feature": 290,
        "density": 0.88,
        "decoder_cos_with_mean": 0.12,
        "antipodal_partner": {"feature": 294, "encoder_cos": -0.95},
    }


def test_always_on_bias_direction_and_antipodal_pair() -> None:
    entry = make_entry(
        always_on_features=[389, 290],
        always_on_count=2,
        always_on_explanations=[bias_feature(), pair_feature()],
    )
    d = fired(entry)["always_on"]
    assert d["severity"] == "warning"
    assert d["title"] == "2 always-on features"
    evidence = text(d)
    assert "389, 290" in evidence and "more than 80%" in evidence
    assert "cosine 0.97 with mean(x): it is the mean activation direction" in evidence
    assert "feature 389 fires on 91.0% of tokens" in evidence
    assert "antipodal partner, feature 294 (encoder cosine -0.95)" in evidence
    assert "learning the mean activation" in d["explanation"]
    assert "a pair splitting one direction" in d["explanation"]
    p = rx(d)
    # b_dec at the mean comes first (measured to fix always-on latents on its own); the
    # diversity loss is prescribed only once b_dec already starts at the centre.
    assert "diversity_loss_weight" not in p
    assert p["b_dec_init"] == {"field": "b_dec_init", "old": None, "new": "mean",
                               "why": p["b_dec_init"]["why"]}  # fmt: skip


def test_always_on_single_feature_is_info_unless_it_is_the_bias() -> None:
    plain = {**bias_feature(), "decoder_cos_with_mean": 0.2, "is_bias_direction": False}
    one = make_entry(always_on_count=1, always_on_explanations=[plain])
    assert fired(one)["always_on"]["severity"] == "info"
    bias = make_entry(always_on_count=1, always_on_explanations=[bias_feature()])
    assert fired(bias)["always_on"]["severity"] == "warning"
    assert fired(make_entry(always_on_count=3))["always_on"]["severity"] == "critical"


def test_always_on_with_b_dec_at_the_mean_moves_to_the_median_not_a_diversity_loss() -> None:
    # the diversity loss was measured to change nothing (docs/prescriptions.md)
    entry = make_entry(
        always_on_count=2, trainer={"diversity_loss_weight": 0.01, "b_dec_init": "mean"}
    )
    p = rx(fired(entry)["always_on"])
    assert "diversity_loss_weight" not in p
    assert (p["b_dec_init"]["old"], p["b_dec_init"]["new"]) == ("mean", "geometric_median")


@pytest.mark.parametrize("count", [0, None])
def test_always_on_near_miss(count: int | None) -> None:
    assert "always_on" not in fired(make_entry(always_on_count=count))
    nm = make_entry(always_on_count=5, not_measured={"always_on_count": "skipped"})
    assert "always_on" not in fired(nm)


# (b) dead features -----------------------------------------------------------------------


def dead_entry(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(
        trainer=dict(TOPK_TRAINER),
        training_tokens=500_000,
        dead_pct=60.0,
        dead_count=2765,
        never_fired_count=1200,
        tokens_seen=1_000_000,
    )
    base.update(kw)
    return make_entry(**base)


def test_dead_features_prescribes_fewer_latents_not_auxk_or_more_tokens() -> None:
    d = fired(dead_entry())["dead_features"]
    assert d["severity"] == "critical"
    evidence = text(d)
    assert "60.00% of features (2,765 of 4,608)" in evidence
    assert "1,200 features never fired" in evidence
    assert "1,000,000 tokens" in evidence and "500.0 times" in evidence
    p = rx(d)
    # AuxK: no effect; doubled tokens: hurt (docs/prescriptions.md)
    assert "auxk_alpha" not in p and "training_tokens" not in p
    assert (p["expansion_factor"]["old"], p["expansion_factor"]["new"]) == (8, 4)


def test_dead_features_keeps_existing_auxk_and_never_goes_below_one() -> None:
    trainer = {**TOPK_TRAINER, "auxk_alpha": 1 / 32, "expansion_factor": 1}
    p = rx(fired(dead_entry(trainer=trainer, dead_pct=30.0))["dead_features"])
    assert "auxk_alpha" not in p
    assert "expansion_factor" not in p  # 1 would become 0.5: narrower than the model
    odd = rx(fired(dead_entry(trainer={**TOPK_TRAINER, "expansion_factor": 1.5}))["dead_features"])
    assert odd["expansion_factor"]["new"] == 1


def test_dead_features_expansion_from_d_sae_over_d_in() -> None:
    p = rx(fired(dead_entry(trainer={}, d_sae=576 * 16))["dead_features"])
    assert (p["expansion_factor"]["old"], p["expansion_factor"]["new"]) == (16, 8)


def test_dead_features_relu_moves_to_topk() -> None:
    p = rx(fired(dead_entry(architecture="relu", k=None, trainer={}))["dead_features"])
    assert (p["architecture"]["old"], p["architecture"]["new"]) == ("relu", "topk")


def test_dead_features_short_horizon_prescribes_evaluation_not_training() -> None:
    d = fired(dead_entry(tokens_seen=30_000))["dead_features"]
    assert d["severity"] == "info"
    assert "too few tokens" in d["title"]
    assert "15.0 times" in text(d) and "40,000 tokens" in text(d)
    assert [p["field"] for p in d["prescriptions"]] == ["eval_tokens"]
    assert d["prescriptions"][0]["old"] == 30_000


def test_dead_features_does_not_shrink_a_dictionary_that_reconstructs_poorly() -> None:
    p = rx(fired(dead_entry(loss_recovered=0.4))["dead_features"])
    assert "expansion_factor" not in p and "training_tokens" not in p


@pytest.mark.parametrize(
    "kw",
    [
        {"dead_pct": 15.0},
        {"dead_pct": None},
        {"not_measured": {"dead_pct": "no codes"}},
    ],
)
def test_dead_features_near_miss(kw: dict[str, Any]) -> None:
    assert "dead_features" not in fired(dead_entry(**kw))


# (c) L0 ----------------------------------------------------------------------------------


def test_l0_too_high_topk_moves_k_toward_64() -> None:
    d = fired(make_entry(k=400, trainer={"k": 400}, l0=400.0))["l0_too_high"]
    assert d["severity"] == "warning"
    assert "k = 400" in text(d)
    assert (rx(d)["top_k"]["old"], rx(d)["top_k"]["new"]) == (400, 64)


def test_l0_too_high_relu_doubles_penalty() -> None:
    entry = finllama_entry(trainer={"l1_penalty": 1e-4})
    d = fired(entry)["l0_too_high"]
    assert d["severity"] == "critical"
    assert "L0 = 856.3" in text(d)
    assert (rx(d)["l1_penalty"]["old"], rx(d)["l1_penalty"]["new"]) == (1e-4, 2e-4)


def test_l0_too_high_without_penalty_prescribes_topk() -> None:
    p = rx(fired(finllama_entry())["l0_too_high"])
    assert p["architecture"]["new"] == "topk" and p["top_k"]["new"] == 64


def test_l0_too_low() -> None:
    d = fired(make_entry(k=3, l0=3.0))["l0_too_low"]
    assert d["severity"] == "critical"
    assert (rx(d)["top_k"]["old"], rx(d)["top_k"]["new"]) == (3, 32)
    relu = make_entry(architecture="relu", k=None, trainer={"sparsity_penalty": 0.002}, l0=7.0)
    p = rx(fired(relu)["l0_too_low"])
    assert (p["sparsity_penalty"]["old"], p["sparsity_penalty"]["new"]) == (0.002, 0.001)
    assert "l0_too_low" in fired(make_entry(l0=15.0))  # the gap below 20: fallback warning


@pytest.mark.parametrize("l0", [32.0, 250.0, None])
def test_l0_near_miss(l0: float | None) -> None:
    found = fired(make_entry(l0=l0))
    assert "l0_too_high" not in found and "l0_too_low" not in found


# (d) reconstruction ----------------------------------------------------------------------


def test_poor_reconstruction_topk() -> None:
    entry = make_entry(
        trainer=dict(TOPK_TRAINER), training_tokens=500_000, loss_recovered=0.55, cossim=0.8
    )
    d = fired(entry)["poor_reconstruction"]
    assert d["severity"] == "warning"
    assert "loss recovered 55.00% (warning)" in text(d)
    assert "cosine(x, x̂) = 0.800" in text(d)
    p = rx(d)
    assert (p["top_k"]["old"], p["top_k"]["new"]) == (32, 64)
    assert (p["expansion_factor"]["old"], p["expansion_factor"]["new"]) == (8, 16)
    assert "training_tokens" not in p  # doubled tokens hurt (docs/prescriptions.md)


def test_poor_reconstruction_on_variance_explained_says_so() -> None:
    entry = make_entry(variance_explained=0.45, not_measured={"loss_recovered": "no LM"})
    d = fired(entry)["poor_reconstruction"]
    assert d["severity"] == "critical"
    assert "variance explained 45.00% (graded in place of loss recovered)" in text(d)


def test_poor_reconstruction_does_not_grow_dead_or_raise_high_k() -> None:
    entry = make_entry(k=400, trainer={"k": 400}, loss_recovered=0.4, dead_pct=60.0, l0=400.0)
    p = rx(fired(entry)["poor_reconstruction"])
    assert "expansion_factor" not in p and "top_k" not in p


@pytest.mark.parametrize(
    "kw",
    [
        {"loss_recovered": 0.72},
        {"variance_explained": 0.9},
        {"loss_recovered": None, "variance_explained": None},
        {},
    ],
)
def test_poor_reconstruction_near_miss(kw: dict[str, Any]) -> None:
    assert "poor_reconstruction" not in fired(make_entry(**kw))


# (e) absorption --------------------------------------------------------------------------


def test_high_absorption() -> None:
    entry = make_entry(
        trainer=dict(TOPK_TRAINER),
        absorption=0.312,
        absorption_features=4257,
        absorption_method="decoder_cosine_exact_chunked",
    )
    d = fired(entry)["high_absorption"]
    assert d["severity"] == "warning"
    assert "0.312 over 4,257 alive features" in text(d)
    p = rx(d)
    assert (p["decoder_orthogonality_weight"]["old"], p["decoder_orthogonality_weight"]["new"]) == (
        None,
        0.01,
    )
    assert p["expansion_factor"]["new"] == 4
    assert fired(make_entry(absorption=0.4))["high_absorption"]["severity"] == "critical"


@pytest.mark.parametrize("value", [0.196, 0.25, None])
def test_high_absorption_near_miss(value: float | None) -> None:
    # 0.25 is inclusive in "0.25..0.35": a warning; only strictly below is silent.
    found = fired(make_entry(absorption=value))
    assert ("high_absorption" in found) == (value == 0.25)


# (f) training-data mismatch --------------------------------------------------------------


def comparison(jsd: float, ve_delta: float) -> dict[str, Any]:
    return {
        "corpus": "python-code@test",
        "tokens_counted": 60_000,
        "metrics": {"variance_explained": 0.78 + ve_delta, "l0": 32.0},
        "deltas": {"variance_explained": ve_delta, "l0": 0.0},
        "density_jsd": jsd,
        "appeared": list(range(412)),
        "disappeared": list(range(57)),
    }


def test_mismatch_from_corpus_comparison() -> None:
    entry = make_entry(
        training_corpus="python-docs@train",
        variance_explained=0.78,
        l0=32.0,
        corpus_comparison=comparison(0.31, -0.12),
    )
    d = fired(entry)["data_mismatch"]
    assert d["severity"] == "warning"
    evidence = text(d)
    assert "JSD between python-docs@test and python-code@test = 0.310 bits" in evidence
    assert "412 features alive only on python-code@test, 57 alive only on python-docs@test" in (
        evidence
    )
    assert "variance explained: 78.00% on python-docs@test vs 66.00% on python-code@test" in (
        evidence
    )
    assert "change -0.12" in evidence
    # the compare corpus is the one it serves worse: train on its train split
    assert [(p["field"], p["new"]) for p in d["prescriptions"]] == [
        ("dataset", "python-code@train")
    ]


def own_domain(ve_delta: float, interval: list[float] | None) -> dict[str, Any]:
    """Trained on python-code, evaluated on python-docs@test, compared on python-code@test
    (invented numbers: the JSD stays below its threshold so only the gap can fire)."""
    c = comparison(0.06, ve_delta)
    if interval is not None:
        c["delta_intervals"] = {"variance_explained": interval}
    return make_entry(training_corpus="python-code@train", corpus_comparison=c)


def test_mismatch_from_an_advantage_on_the_own_training_domain() -> None:
    from saedoctor.health.rules.mismatch import OWN_DOMAIN_GAP

    d = fired(own_domain(OWN_DOMAIN_GAP + 0.02, [0.06, 0.08]))["data_mismatch"]
    assert d["severity"] == "warning"
    assert "python-code@test is the SAE's own training dataset" in text(d)
    assert [(p["field"], p["new"]) for p in d["prescriptions"]] == [
        ("dataset", "python-docs@train")
    ]
    # below the gap, or an interval that reaches 0, or the gap against its own domain: silent
    assert "data_mismatch" not in fired(own_domain(OWN_DOMAIN_GAP - 0.01, [0.03, 0.05]))
    assert "data_mismatch" not in fired(own_domain(OWN_DOMAIN_GAP + 0.02, [-0.01, 0.15]))
    assert "data_mismatch" not in fired(own_domain(-(OWN_DOMAIN_GAP + 0.02), [-0.08, -0.06]))
    evaluated_on_own = own_domain(OWN_DOMAIN_GAP + 0.02, [0.06, 0.08])
    assert "data_mismatch" not in fired(evaluated_on_own, {"corpus": "python-code@test"})


def test_mismatch_density_shift_alone_is_info_and_severe_drop_is_critical() -> None:
    shift = make_entry(training_corpus="python-docs@train", corpus_comparison=comparison(0.2, 0))
    assert fired(shift)["data_mismatch"]["severity"] == "info"
    drop = make_entry(corpus_comparison=comparison(0.05, -0.25))
    assert fired(drop)["data_mismatch"]["severity"] == "critical"


def test_mismatch_from_training_corpus_when_poor() -> None:
    run = {"corpus": "financial-news@test"}
    d = fired(finllama_entry(), run)["data_mismatch"]
    assert d["title"] == "trained on wikitext-103, evaluated on financial-news@test"
    assert "held back by l0, dead_pct" in text(d)
    assert [(p["field"], p["new"]) for p in d["prescriptions"]] == [
        ("dataset", "financial-news@train")
    ]


@pytest.mark.parametrize(
    ("entry", "run"),
    [
        # comparison below both thresholds, same dataset as training
        (
            make_entry(
                training_corpus="python-docs@train", corpus_comparison=comparison(0.02, -0.01)
            ),
            RUN,
        ),
        # another dataset but the SAE is healthy there
        (make_entry(training_corpus="wikitext-103", l0=50.0, dead_pct=3.0), RUN),
        # poor, but two splits of one dataset are not a mismatch
        (make_entry(training_corpus="python-docs@train", l0=900.0), RUN),
        # poor, training corpus unknown
        (make_entry(l0=900.0), RUN),
        # poor, evaluation corpus unknown (cached activations)
        (make_entry(training_corpus="wikitext-103", l0=900.0), {"corpus": None}),
        # comparison metrics not measured
        (make_entry(corpus_comparison={"corpus": "x", "density_jsd": None, "deltas": {}}), RUN),
    ],
)
def test_mismatch_near_miss(entry: dict[str, Any], run: dict[str, Any]) -> None:
    assert "data_mismatch" not in fired(entry, run)


# ordering and robustness ----------------------------------------------------------------


def test_diagnoses_sorted_most_severe_first() -> None:
    entry = finllama_entry(always_on_explanations=[], trainer={"l1_penalty": 1e-4})
    severities = [d["severity"] for d in diagnose_entry(entry, POLICY, RUN)]
    assert severities == sorted(severities, key=["critical", "warning", "info"].index)


@pytest.mark.parametrize(
    "entry",
    [
        {},
        {"name": "bare", "metrics": {}},
        {"metrics": {"dead_pct": 90.0}, "config": None, "site": None},
        {"metrics": {"always_on_count": 3}, "always_on_explanations": None},
        {"metrics": {"l0": 900.0}, "config": {"metadata": {"trainer": "not a dict"}}},
    ],
)
def test_rules_survive_sparse_entries(entry: dict[str, Any]) -> None:
    for d in diagnose_entry(entry, POLICY):
        assert d["severity"] in ("critical", "warning", "info")
        assert all(p["old"] is None for p in d["prescriptions"] if p["field"] != "eval_tokens")
