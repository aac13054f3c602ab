"""Every rule's prescriptions are values `saedoctor train` accepts, even for extreme SAEs.

For each extreme entry (all configs here are invented to sit at a limit: an expansion factor
below 1, k next to the dictionary size, huge or fractional values), every diagnosis that
fires, and the merged prescriptions, go through the same code as `saedoctor train
--from-prescription`: nothing may be skipped, and the result must pass `validate()` and
`check_against_model` with k below the dictionary size.
"""

from __future__ import annotations

from typing import Any

import pytest

from preflight_cases import norm_check, outlier_check, site_check, special_check, with_preflight
from saedoctor import limits
from saedoctor.errors import InputError
from saedoctor.health import diagnose_sweep, load_policy
from saedoctor.health.diagnosis import merge_prescriptions
from saedoctor.health.grading import grade_entry
from saedoctor.health.rules import ENTRY_RULES
from saedoctor.health.types import Context
from saedoctor.sae.arch import TOPK_ARCHITECTURES, TRAINABLE_ARCHITECTURES
from saedoctor.train import config as train_config
from saedoctor.train.config import TrainConfig, check_against_model, d_sae_for
from saedoctor.train.prescription import NOT_TRAINING, apply_prescriptions, base_config
from test_health_entries import make_entry

POLICY = load_policy()
RUN = {"corpus": "python-docs@test", "options": {"always_on_threshold": 0.8}}
N_LAYERS = 64  # invented: any layer the entries name exists


def narrow(**kw: Any) -> dict[str, Any]:
    """x0.4: 256 latents over a 640-wide site (invented width, so 0.4 is exact)."""
    trainer = {"expansion_factor": 0.4, "k": 32, "b_dec_init": "zeros", "auxk_alpha": 0.0}
    base: dict[str, Any] = dict(layer=3, d_in=640, d_sae=256, k=32, trainer=trainer,
                                training_tokens=120_000)  # fmt: skip
    return make_entry(**{**base, **kw})


def k_near_d_sae(k: int, **kw: Any) -> dict[str, Any]:
    """x2 over a 64-wide site: 128 latents, k close to (or at) all of them."""
    return make_entry(layer=3, d_in=64, d_sae=128, k=k, trainer={"expansion_factor": 2, "k": k},
                      training_tokens=50_000, **kw)  # fmt: skip


def recon_problem() -> dict[str, Any]:
    return {"variance_explained": 0.45, "not_measured": {"loss_recovered": "no LM"}}


EXTREME: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "narrow, poor reconstruction": (narrow(**recon_problem()), RUN),
    "narrow, always-on": (narrow(always_on_count=16), RUN),
    "narrow, dead": (narrow(dead_pct=67.0, tokens_seen=60_000), RUN),
    "narrow, absorption": (narrow(absorption=0.4), RUN),
    "narrow, L0 too low": (narrow(l0=5.0), RUN),
    "narrow, L0 too high": (narrow(l0=900.0, k=900, trainer={"expansion_factor": 0.4}), RUN),
    "narrow, off its training data": (
        narrow(training_corpus="wikitext-103", l0=900.0), {"corpus": "financial-news@test"}),
    "k near d_sae, L0 too low, dead": (
        k_near_d_sae(100, l0=15.0, dead_pct=60.0, tokens_seen=1_000_000), RUN),
    "k near d_sae, poor reconstruction": (k_near_d_sae(120, **recon_problem()), RUN),
    "k = d_sae, poor reconstruction": (k_near_d_sae(128, **recon_problem()), RUN),
    "k near d_sae, absorption": (k_near_d_sae(120, absorption=0.5), RUN),
    "k = 1, L0 too high (BatchTopK)": (
        make_entry(layer=3, architecture="batchtopk", k=1, trainer={"k": 1}, l0=600.0), RUN),
    "relu, huge L1, L0 too high": (
        make_entry(layer=3, architecture="relu", k=None, trainer={"l1_penalty": 1e308},
                   l0=900.0), RUN),
    "relu, tiny penalties, L0 too low": (
        make_entry(layer=3, architecture="relu", k=None,
                   trainer={"l1_penalty": 0.5, "sparsity_penalty": 1e-12}, l0=3.0), RUN),
    "jumprelu, dead": (
        make_entry(layer=3, architecture="jumprelu", k=None, trainer={"sparsity_penalty": 1.0},
                   dead_pct=60.0, tokens_seen=1_000_000), RUN),
    "fractional token count, dead": (
        make_entry(layer=3, trainer={"k": 32}, training_tokens=150_000.5, dead_pct=60.0,
                   tokens_seen=1_000_000), RUN),  # type: ignore[arg-type]
    "x1, dead": (
        make_entry(layer=3, d_sae=576, trainer={"expansion_factor": 1, "k": 32}, dead_pct=60.0,
                   tokens_seen=1_000_000), RUN),
    "large weights in use, always-on and absorption": (
        make_entry(layer=3, trainer={"k": 32, "b_dec_init": "mean", "diversity_loss_weight": 0.6,
                                     "decoder_orthogonality_weight": 2.0},
                   always_on_count=3, absorption=0.4), RUN),
    "negative orthogonality weight, absorption": (
        make_entry(layer=3, trainer={"k": 32, "decoder_orthogonality_weight": -1},
                   absorption=0.4), RUN),
    "miswired site and special tokens (pre-flight)": (
        with_preflight(make_entry(layer=3, trainer={"k": 32}), site=site_check(),
                       special=special_check()), RUN),
    "input scale, activation outliers, dead (pre-flight)": (
        with_preflight(make_entry(layer=3, trainer={"k": 32, "b_dec_init": "zeros"},
                                  dead_pct=60.0, tokens_seen=1_000_000),
                       norm=norm_check(), outliers=outlier_check()), RUN),
}  # fmt: skip


def retrained(entry: dict[str, Any], run: dict[str, Any], prescriptions: list) -> TrainConfig:
    """The prescriptions through `train --from-prescription`'s code; fails on any skip."""
    d_in = entry["config"]["d_in"]
    cfg, changes, skipped = apply_prescriptions(base_config(entry, run), prescriptions, "t", d_in)
    assert [field for field, _ in skipped if field not in NOT_TRAINING] == [], skipped
    training = [p for p in prescriptions if p["field"] not in NOT_TRAINING]
    assert {c.field for c in changes} >= {p["field"] for p in training}
    check_against_model(cfg, N_LAYERS, d_in, "m")
    if cfg.architecture in TOPK_ARCHITECTURES:
        assert cfg.top_k < d_sae_for(cfg, d_in)  # below the dictionary: still a sparse code
    return cfg


@pytest.mark.parametrize("case", list(EXTREME))
def test_every_rule_prescribes_only_what_train_accepts(case: str) -> None:
    entry, run = EXTREME[case]
    ctx = Context(POLICY, grade_entry(entry, POLICY), run)
    diagnoses = [d for rule in ENTRY_RULES if (d := rule(entry, ctx)) is not None]
    assert diagnoses, f"{case}: the entry was built to fire a rule"
    for d in diagnoses:
        if d["prescriptions"]:  # a rule may prescribe nothing measured to help
            retrained(entry, run, d["prescriptions"])
        for p in d["prescriptions"]:
            assert p["new"] != p["old"], p
    if merged := merge_prescriptions(diagnoses):
        retrained(entry, run, merged)


def test_the_extreme_entries_reach_every_rule() -> None:
    reached = set()
    for entry, run in EXTREME.values():
        ctx = Context(POLICY, grade_entry(entry, POLICY), run)
        reached |= {rule.__name__ for rule in ENTRY_RULES if rule(entry, ctx) is not None}
    assert reached == {rule.__name__ for rule in ENTRY_RULES}


def test_late_layer_rule_on_a_narrow_deepest_layer() -> None:
    entries = [
        narrow(name=f"L{layer}", layer=layer, loss_recovered=value)
        for layer, value in ((4, 0.95), (10, 0.9), (16, 0.65), (28, 0.3))
    ]
    found = {d["id"]: d for d in diagnose_sweep(entries, RUN, POLICY)["diagnoses"]}
    prescriptions = found["late_layer_reconstruction"]["prescriptions"]
    assert {p["field"]: p["new"] for p in prescriptions} == {"layer": 10, "expansion_factor": 1}
    assert retrained(entries[-1], RUN, prescriptions).layers == [10]


# The clamped values themselves ---------------------------------------------------------


def prescribed(entry: dict[str, Any], run: dict[str, Any] = RUN) -> dict[str, dict]:
    ctx = Context(POLICY, grade_entry(entry, POLICY), run)
    diagnoses = [d for rule in ENTRY_RULES if (d := rule(entry, ctx)) is not None]
    return {p["field"]: p for p in merge_prescriptions(diagnoses)}


def test_doubling_a_narrow_dictionary_stops_at_one() -> None:
    p = prescribed(EXTREME["narrow, poor reconstruction"][0])["expansion_factor"]
    assert (p["old"], p["new"]) == (0.4, 1)  # doubled: 0.8, below what train accepts
    assert "0.8 clamped to 1" in p["why"]


def test_a_narrow_sae_is_widened_to_one_whatever_the_diagnosis() -> None:
    p = prescribed(EXTREME["narrow, always-on"][0])
    assert (p["b_dec_init"]["new"], p["expansion_factor"]["new"]) == ("mean", 1)
    assert "narrower than the model" in p["expansion_factor"]["why"]


def test_raised_k_fits_the_dictionary_a_shrinking_rule_leaves() -> None:
    p = prescribed(EXTREME["k near d_sae, L0 too low, dead"][0])
    # L0 too low doubles k (100 -> 200); dead features halve x2 -> x1 (64 latents). 200 fits
    # neither, and lowering k would undo the L0 rule: k is left alone. The halved dictionary
    # must still hold the SAE's own k = 100: x1 grows to 101 / 64.
    assert "top_k" not in p
    assert p["expansion_factor"]["new"] == pytest.approx(101 / 64, abs=1e-5)
    assert d_sae_for(TrainConfig(expansion_factor=p["expansion_factor"]["new"]), 64) == 101


def test_k_is_raised_up_to_just_below_the_dictionary() -> None:
    p = prescribed(EXTREME["k near d_sae, poor reconstruction"][0])
    assert (p["top_k"]["old"], p["top_k"]["new"]) == (120, 127)  # min(200, 240) -> 127 of 128
    assert "clamped to 127" in p["top_k"]["why"]
    assert "top_k" not in prescribed(EXTREME["k = d_sae, poor reconstruction"][0])


def test_no_op_and_non_finite_prescriptions_are_dropped() -> None:
    batch = prescribed(EXTREME["k = 1, L0 too high (BatchTopK)"][0])
    assert "top_k" not in batch  # halving k = 1 stays 1
    assert "l1_penalty" not in prescribed(EXTREME["relu, huge L1, L0 too high"][0])  # 2e308: inf
    x1 = prescribed(EXTREME["x1, dead"][0])
    assert "expansion_factor" not in x1  # x1 halved would be narrower than the model


def test_weights_not_in_use_start_at_their_defaults() -> None:
    used = prescribed(EXTREME["large weights in use, always-on and absorption"][0])
    assert "diversity_loss_weight" not in used  # measured to change nothing
    assert used["decoder_orthogonality_weight"]["new"] == 4
    # A negative weight (a config train refuses) is not "in use": the starting weight again.
    orthogonality = prescribed(EXTREME["negative orthogonality weight, absorption"][0])
    assert orthogonality["decoder_orthogonality_weight"]["new"] == 0.01


# apply_prescriptions: a prescription is skipped only for its own fault ---------------------


def test_a_prescription_waits_for_the_one_that_fixes_the_base() -> None:
    base = TrainConfig(expansion_factor=0.4, b_dec_init="zeros")  # invalid: narrower than d
    prescriptions = [
        {"field": "b_dec_init", "old": "zeros", "new": "mean", "why": "always-on"},
        {"field": "expansion_factor", "old": 0.4, "new": 1, "why": "train needs >= 1"},
    ]
    cfg, changes, skipped = apply_prescriptions(base, prescriptions, "t")
    assert (cfg.b_dec_init, cfg.expansion_factor, skipped) == ("mean", 1, [])
    assert [c.field for c in changes] == ["expansion_factor", "b_dec_init"]
    with pytest.raises(InputError, match="t: expansion_factor=0.4: expected >= 1"):
        apply_prescriptions(base, prescriptions[:1], "t")


def test_prescriptions_that_fix_the_base_only_together_apply_together() -> None:
    # x0.4 with k 900 (invented): neither x1 alone (k 900 > 576 latents) nor k 64 alone
    # (still x0.4) is trainable; together they are. A bad learning rate is skipped alone.
    base = TrainConfig(expansion_factor=0.4, top_k=900)
    prescriptions = [
        {"field": "top_k", "old": 900, "new": 64, "why": "L0"},
        {"field": "learning_rate", "old": None, "new": 5.0, "why": "invented"},
        {"field": "expansion_factor", "old": 0.4, "new": 1, "why": "width"},
    ]
    cfg, changes, skipped = apply_prescriptions(base, prescriptions, "t", d_in=576)
    assert (cfg.top_k, cfg.expansion_factor, cfg.learning_rate) == (64, 1, None)
    assert [c.field for c in changes] == ["top_k", "expansion_factor"]
    assert skipped == [("learning_rate", "learning_rate=5.0: expected a number in (0, 1)")]


def test_a_top_k_larger_than_the_dictionary_is_skipped_with_the_site_width() -> None:
    big_k = [{"field": "top_k", "old": 32, "new": 5000, "why": "invented"}]
    cfg, changes, skipped = apply_prescriptions(TrainConfig(), big_k, "t", d_in=576)
    assert cfg.top_k == 32 and changes == []
    assert skipped == [("top_k", "top_k=5000 exceeds the dictionary size d_sae=4608 "
                                 "(expansion_factor 8 x d_in 576)")]  # fmt: skip


def test_train_config_uses_the_shared_limits() -> None:
    assert train_config.ARCHITECTURES == TRAINABLE_ARCHITECTURES
    assert train_config.B_DEC_INITS == limits.B_DEC_INITS
    with pytest.raises(InputError, match="expansion_factor=0.99"):
        TrainConfig(expansion_factor=limits.MIN_EXPANSION - 0.01).validate()
    TrainConfig(expansion_factor=limits.MIN_EXPANSION).validate()
    for name in limits.PENALTY_FIELDS:
        with pytest.raises(InputError, match=f"{name}=-1"):
            train_config.with_changes(TrainConfig(), {name: -1}, "t").validate()
