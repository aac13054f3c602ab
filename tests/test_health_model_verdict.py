"""health/model_verdict.py: a model's "critical issue" / "mild issue" / "healthy" verdict, on
planted SAEs whose answer is known from the rule (docs/grading.md, Model verdict)."""

from __future__ import annotations

from saedoctor.health.model_verdict import (
    CRITICAL_ISSUE,
    HEALTHY_MODEL,
    MILD_ISSUE,
    NOT_ASSESSED,
    GradedSAE,
    MetricGrade,
    model_verdict,
)

ALL_EXCELLENT = {  # planted values inside each metric's excellent band
    "always_on_count": 0, "diversity_top10": 9.0, "loss_recovered": 0.9, "l0": 50.0,
    "dead_pct": 5.0, "absorption": 0.2,
}


def sae(label: str, **changes: tuple[str, float]) -> GradedSAE:
    """All six metrics excellent, except `metric=(status, value)` changes."""
    metrics = {m: MetricGrade("excellent", v, m) for m, v in ALL_EXCELLENT.items()}
    for metric, (status, value) in changes.items():
        metrics[metric] = MetricGrade(status, value, metric)
    return GradedSAE(label, metrics)


def test_nothing_measured_is_not_assessed() -> None:
    assert model_verdict([]).verdict == NOT_ASSESSED
    ungraded = GradedSAE.from_grading("layer 3", None)
    result = model_verdict([ungraded])
    assert result.verdict == NOT_ASSESSED and result.best is None


def test_one_usable_sae_saves_the_model_from_critical() -> None:
    saes = [sae("layer 4", loss_recovered=("critical", 0.3)),
            sae("layer 10", dead_pct=("warning", 35.0)),
            sae("layer 16", l0=("critical", 900.0))]
    result = model_verdict(saes)
    assert result.verdict == MILD_ISSUE and result.best == "layer 10"
    assert "held back by dead features 35.00% (warning)" in result.reason


def test_every_sae_critical_is_a_critical_issue_naming_each() -> None:
    saes = [sae("layer 4", loss_recovered=("critical", 0.3)),
            sae("layer 10", loss_recovered=("critical", 0.45), l0=("critical", 900.0))]
    result = model_verdict(saes)
    assert result.verdict == CRITICAL_ISSUE
    assert result.reason == ("no SAE free of critical metrics: loss recovered 30.00% at "
                             "layer 4, 45.00% at layer 10, L0 900.00 at layer 10")
    assert [p.metric for p in result.problems] == ["loss_recovered", "l0"]


def test_one_excellent_sae_makes_the_model_healthy() -> None:
    saes = [sae("layer 4", always_on_count=("critical", 5)), sae("layer 10")]
    result = model_verdict(saes)
    assert result.verdict == HEALTHY_MODEL and result.best == "layer 10"
    # the always-on headline still leads the reason, with where it is
    assert result.reason.startswith("always-on features in 1 of 2 SAEs (5): layer 4; ")


def test_healthy_on_what_was_measured_says_what_was_not() -> None:
    partial = GradedSAE("goodfire", {"always_on_count": MetricGrade("excellent", 0),
                                     "diversity_top10": MetricGrade("excellent", 10.0)})
    result = model_verdict([partial])
    assert result.verdict == HEALTHY_MODEL
    assert result.reason == ("goodfire is excellent on every measured metric (0 always-on "
                             "features, feature diversity 10.00); not measured: loss recovered, "
                             "L0, dead features, absorption")


def test_good_metrics_alone_are_a_mild_issue() -> None:
    result = model_verdict([sae("layer 10", always_on_count=("good", 1))])
    assert result.verdict == MILD_ISSUE
    assert result.reason == ("1 always-on feature in layer 10; best SAE layer 10 has no "
                             "critical metric; held back by 1 always-on feature (good)")


def test_ties_break_on_always_on_then_reconstruction_then_order() -> None:
    a = sae("layer 4", always_on_count=("good", 2), loss_recovered=("excellent", 0.99))
    b = sae("layer 10", always_on_count=("good", 1), loss_recovered=("excellent", 0.85))
    c = sae("layer 16", always_on_count=("good", 1), loss_recovered=("excellent", 0.95))
    assert model_verdict([a, b, c]).best == "layer 16"
    assert model_verdict([b, sae("layer 22", always_on_count=("good", 1),
                                 loss_recovered=("excellent", 0.85))]).best == "layer 10"


def test_fewer_problems_beat_fewer_always_on() -> None:
    a = sae("layer 4", always_on_count=("excellent", 0), dead_pct=("warning", 40.0),
            absorption=("warning", 0.3))
    b = sae("layer 10", always_on_count=("good", 1))
    assert model_verdict([a, b]).best == "layer 10"


def test_variance_explained_standing_in_is_named() -> None:
    stand_in = GradedSAE("layer 2", {"loss_recovered": MetricGrade("critical", 0.4,
                                                                   "variance_explained")})
    result = model_verdict([stand_in])
    assert result.verdict == CRITICAL_ISSUE
    assert "loss recovered 40.00% (variance explained) at layer 2" in result.reason


def test_from_grading_reads_the_graders_block() -> None:
    grading = {"statuses": {"l0": {"value": 856.27, "status": "critical", "source": "l0"},
                            "absorption": {"value": None, "status": "not measured"}}}
    graded = GradedSAE.from_grading("finllama", grading)
    assert graded.measured() == ["l0"] and graded.at("critical") == ["l0"]
    assert model_verdict([graded]).verdict == CRITICAL_ISSUE
