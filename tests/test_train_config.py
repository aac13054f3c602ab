"""Training config: the guide's names, per-layer overrides, presets, refusals that explain."""

from __future__ import annotations

import pytest

from saedoctor.errors import InputError
from saedoctor.train.config import (
    PRESETS,
    TrainConfig,
    check_against_model,
    preset_config,
    with_changes,
)


def test_defaults_validate_and_steps_follow_the_batch() -> None:
    cfg = TrainConfig(training_tokens=10_240, batch_size=4, context=128, gradient_accumulation=2)
    cfg.validate()
    assert cfg.micro_batch_tokens == 512 and cfg.tokens_per_step == 1024
    assert cfg.total_steps == 10


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"expansion_factor": 0.25}, ["expansion_factor=0.25", ">= 1", "fewer latents"]),
        ({"dead_feature_threshold": 0.1}, ["dead_feature_threshold=0.1", "number of tokens"]),
        ({"architecture": "relu", "l1_penalty": 0.0}, ["relu", "sparsity penalty"]),
        ({"architecture": "jumprelu"}, ["jumprelu", "sparsity_penalty"]),
        ({"architecture": "gated"}, ["architecture='gated'", "topk"]),
        ({"learning_rate": 2.0}, ["learning_rate=2.0"]),
        ({"training_tokens": 100}, ["fewer than one optimizer step"]),
        ({"top_k": 0}, ["top_k=0"]),
        ({"diversity_loss_weight": -1}, ["diversity_loss_weight=-1"]),
        ({"b_dec_init": "median"}, ["b_dec_init", "geometric_median"]),
        ({"layers": [3, 3]}, ["distinct"]),
        ({"precision": "fp8"}, ["precision"]),
    ],
)
def test_values_that_cannot_work_are_refused_with_the_reason(changes, words) -> None:
    with pytest.raises(InputError) as err:
        with_changes(TrainConfig(), changes, "test").validate()
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_unknown_fields_are_refused_with_a_suggestion() -> None:
    with pytest.raises(InputError, match="did you mean expansion_factor"):
        with_changes(TrainConfig(), {"expansion_factr": 4}, "cfg.json")
    with pytest.raises(InputError, match="per-layer training field 'dataset'"):
        TrainConfig(layer_overrides={"4": {"dataset": "x"}}).for_layer(4)


def test_aliases_and_guide_names_are_accepted() -> None:
    cfg = with_changes(TrainConfig(), {"k": 16, "lr": 1e-4, "l1_coefficient": 2.0,
                                       "layer": 7, "corpus": "python-code@train"}, "t")  # fmt: skip
    assert (cfg.top_k, cfg.learning_rate, cfg.l1_penalty) == (16, 1e-4, 2.0)
    assert cfg.layers == [7] and cfg.dataset == "python-code@train"


def test_layer_overrides_apply_to_their_layers_only() -> None:
    cfg = TrainConfig(
        layers=[4, 16, 22, 28],
        layer_overrides={"4": {"expansion_factor": 4}, "20-28": {"top_k": 64}},
    ).validate()
    assert cfg.for_layer(4).expansion_factor == 4 and cfg.for_layer(4).top_k == 32
    assert cfg.for_layer(16).expansion_factor == 8 and cfg.for_layer(16).top_k == 32
    assert cfg.for_layer(22).top_k == 64 and cfg.for_layer(28).top_k == 64
    bad = TrainConfig(layers=[4], layer_overrides={"4": {"expansion_factor": 0.5}})
    with pytest.raises(InputError, match="layer 4: expansion_factor=0.5"):
        bad.validate()


def test_model_dependent_checks() -> None:
    cfg = TrainConfig(layers=[30]).validate()
    with pytest.raises(InputError, match="layer 30 out of range"):
        check_against_model(cfg, 30, 576, "m")
    small = TrainConfig(layers=[1], expansion_factor=1, top_k=100).validate()
    with pytest.raises(InputError, match="top_k=100 exceeds"):
        check_against_model(small, 4, 64, "m")


def test_presets_are_valid_configs_and_flags_override_them() -> None:
    for name in PRESETS:
        preset_config(name).validate()
    cfg = preset_config("domain", dataset="python-code@train", top_k=16)
    assert cfg.preset == "domain" and cfg.dataset == "python-code@train" and cfg.top_k == 16
    with pytest.raises(InputError, match="expected one of general, domain"):
        preset_config("finance")


def test_config_round_trips_through_a_dict() -> None:
    cfg = TrainConfig(layers=[2, 5], layer_overrides={"5": {"top_k": 8}}, log_to=["tensorboard"])
    again = TrainConfig.from_dict(cfg.to_dict())
    assert again == cfg
