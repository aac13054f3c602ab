"""Pre-flight checks catch a miswired SAE before any verdict: read at the wrong block, fed
activations at the wrong scale, judged on special tokens, or at a site whose mean dwarfs its
spread; each is a diagnosis with evidence and a prescription, and each can be turned off."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import saved_sae

from preflight_cases import (
    norm_check,
    outlier_check,
    pca_sae,
    site_check,
    site_rows,
    special_check,
    with_preflight,
)
from saedoctor.activations.outliers import GAMMA_HIGH, outlier_severity
from saedoctor.diagnose import DiagnoseOptions, diagnose
from saedoctor.diagnose.options import PREFLIGHT_CHECKS, parse_preflight
from saedoctor.errors import InputError
from saedoctor.health import load_policy
from saedoctor.health.grading import grade_entry
from saedoctor.health.preflight import Gap, NormHint, Preflight, preflight_of
from saedoctor.health.rules.preflight_norm import preflight_norm
from saedoctor.health.rules.preflight_outliers import preflight_outliers
from saedoctor.health.rules.preflight_site import preflight_site
from saedoctor.health.rules.preflight_special import preflight_special
from saedoctor.health.types import Context
from saedoctor.sae.site import Site
from test_health_entries import make_entry

pytestmark = pytest.mark.usefixtures("one_thread")

L = 2  # the block the planted SAEs are built for (the tiny model has blocks 0-3)
POLICY = load_policy()


def _opts(model_dir: Path, corpus: Path, saes: list[Path], **kw: Any) -> DiagnoseOptions:
    base = dict(model=str(model_dir), saes=[str(p) for p in saes], corpus=str(corpus),
                tokens=256, context=32, batch_size=4, quiet=True, downstream=False,
                explain_tokens=64)  # fmt: skip
    return DiagnoseOptions(**{**base, **kw})


def _found(entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["id"]: d for d in entry["diagnoses"]}


def _preflight_ids(entry: dict[str, Any]) -> list[str]:
    return [d["id"] for d in entry["diagnoses"] if d["id"].startswith("preflight_")]


def _planted(model_dir: Path, corpus: Path, tmp: Path, name: str = "sae", **kw: Any) -> Path:
    """An SAE built for block L's resid_post (its config says so), saved."""
    x = site_rows(model_dir, corpus, Site(L))
    return saved_sae(tmp / name, pca_sae(x, Site(L), **kw))


# -- (a) site ----------------------------------------------------------------------------
@pytest.mark.parametrize("layer", [L - 1, L + 1])
def test_an_sae_read_one_block_off_is_caught_and_the_right_block_named(
    tiny_llama_dir, text_corpus, tmp_path, capsys, layer
):
    """`--layer 1` (or 3) for a block-2 SAE: critical, names blocks.2, says it at once."""
    path = _planted(tiny_llama_dir, text_corpus, tmp_path)
    (entry,) = diagnose(_opts(tiny_llama_dir, text_corpus, [path], layer=layer))["saes"]
    assert entry["site"]["layer"] == layer  # evaluated where it was told to be
    found = _found(entry)
    site = found["preflight_site"]
    assert site["severity"] == "critical"
    assert f"fits blocks.{L}.hook_resid_post, not the declared blocks.{layer}" in site["title"]
    assert site["prescriptions"] == [{
        "field": "eval_site", "old": f"blocks.{layer}.hook_resid_post",
        "new": f"blocks.{L}.hook_resid_post",
        "why": f"a diagnose option, not a training change: rerun with --layer {L} "
               "--site resid_post",
    }]  # fmt: skip
    assert any("one block" in line and "hidden_states" in line for line in site["evidence"])
    assert "preflight_norm" not in found  # the wrong site explains the wrong fit
    check = entry["preflight"]["site"]
    assert check["candidates"][0]["hook_name"] == f"blocks.{L}.hook_resid_post"
    assert check["declared"]["fvu"] > 1.15 * check["candidates"][0]["fvu"]
    assert entry["diagnoses"][0]["id"] == "preflight_site"  # first of the report
    err = capsys.readouterr().err
    assert f"fits blocks.{L}.hook_resid_post" in err and "wrong --layer / --site?" in err


def test_a_correctly_wired_sae_raises_no_preflight_diagnosis(tiny_llama_dir, text_corpus,
                                                              tmp_path, capsys):  # fmt: skip
    path = _planted(tiny_llama_dir, text_corpus, tmp_path)
    (entry,) = diagnose(_opts(tiny_llama_dir, text_corpus, [path]))["saes"]
    assert _preflight_ids(entry) == []
    pre = preflight_of(entry)
    assert pre is not None and pre.checks == list(PREFLIGHT_CHECKS) and pre.skipped == {}
    assert pre.site.declared.fvu < min(c.fvu for c in pre.site.candidates)
    assert pre.norm.best.scale == 1.0
    assert pre.special.special_tokens > 0 and pre.outliers.gamma < GAMMA_HIGH
    assert "pre-flight" not in capsys.readouterr().err


# -- (b) input norm ----------------------------------------------------------------------
def test_an_sae_fed_activations_scaled_x10_is_caught(tiny_llama_dir, text_corpus, tmp_path):
    """Built for activations ×0.1 (e.g. normalised in training, not here): fed the raw ones."""
    path = _planted(tiny_llama_dir, text_corpus, tmp_path, expects=0.1)
    (entry,) = diagnose(_opts(tiny_llama_dir, text_corpus, [path]))["saes"]
    found = _found(entry)
    assert "preflight_site" not in found
    norm = found["preflight_norm"]
    assert norm["severity"] == "critical"
    (p,) = norm["prescriptions"]
    assert p["field"] == "eval_input_scale" and 0.1 / 1.2 < p["new"] < 0.1 * 1.2


def test_cached_activations_scaled_x10_are_caught(tiny_llama_dir, text_corpus, tmp_path):
    """The literal case: the right SAE, its activations saved ×10."""
    from safetensors.torch import save_file

    x = site_rows(tiny_llama_dir, text_corpus, Site(L))
    path = saved_sae(tmp_path / "sae", pca_sae(x, Site(L)))
    acts = tmp_path / "acts.safetensors"
    save_file({"acts": (x * 10).float().contiguous()}, str(acts))
    opts = DiagnoseOptions(saes=[str(path)], activations=str(acts), quiet=True)
    (entry,) = diagnose(opts)["saes"]
    (p,) = _found(entry)["preflight_norm"]["prescriptions"]
    assert 0.1 / 1.2 < p["new"] < 0.1 * 1.2
    assert set(entry["preflight"]["skipped"]) == {"site", "special"}  # one site, no token ids
    save_file({"acts": x.float().contiguous()}, str(acts))
    (entry,) = diagnose(opts)["saes"]
    assert _preflight_ids(entry) == []


def test_a_recorded_training_scale_far_from_the_activations_is_a_warning(
    tiny_llama_dir, text_corpus, tmp_path
):
    """The trainer's `input_scale` says the SAE saw activations 10× smaller; it happens to
    fit these (no scan finding), so the record alone warns."""
    x = site_rows(tiny_llama_dir, text_corpus, Site(L))
    spread = float((x - x.mean(0)).pow(2).sum(1).mean().sqrt())
    scale = math.sqrt(x.shape[1]) / (spread / 10)  # E‖s·(x/10 − μ)‖² = d_in
    path = saved_sae(tmp_path / "sae", pca_sae(x, Site(L),
                                               metadata={"trainer": {"input_scale": scale}}))
    (entry,) = diagnose(_opts(tiny_llama_dir, text_corpus, [path]))["saes"]
    norm = _found(entry)["preflight_norm"]
    assert norm["severity"] == "warning"
    assert any("saedoctor trainer input_scale" in line for line in norm["evidence"])
    assert 0.1 / 1.2 < norm["prescriptions"][0]["new"] < 0.1 * 1.2


# -- (c) special tokens ------------------------------------------------------------------
def _loud_bos_model(src: Path, dst: Path) -> Path:
    """The tiny model with a BOS embedding 300× larger: an attention-sink-like outlier."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src)
    tokenizer = AutoTokenizer.from_pretrained(src)
    with torch.no_grad():
        model.get_input_embeddings().weight[tokenizer.bos_token_id] *= 300
    model.save_pretrained(dst)
    tokenizer.save_pretrained(dst)
    return dst


def test_special_tokens_that_distort_the_metrics_are_flagged_when_counted(
    tiny_llama_dir, text_corpus, tmp_path
):
    model = _loud_bos_model(tiny_llama_dir, tmp_path / "loud")
    x = site_rows(model, text_corpus, Site(L))
    meta = {"trainer": {"include_special": False}}
    path = saved_sae(tmp_path / "sae", pca_sae(x, Site(L), metadata=meta))
    (counted,) = diagnose(_opts(model, text_corpus, [path], include_special=True))["saes"]
    special = _found(counted)["preflight_special"]
    assert special["severity"] == "warning"
    assert special["prescriptions"][0]["field"] == "eval_include_special"
    assert any("trained without special tokens" in line for line in special["evidence"])
    check = counted["preflight"]["special"]
    assert check["fvu_with"] > check["fvu_without"] + 0.05
    assert check["trained_with_special"] is False
    (default,) = diagnose(_opts(model, text_corpus, [path]))["saes"]
    assert _preflight_ids(default) == []  # left out of the metrics: nothing to say
    assert default["preflight"]["special"]["fvu_with"] == pytest.approx(check["fvu_with"])


# -- (d) activation outliers -------------------------------------------------------------
def test_outlier_severity_is_mean_norm_over_spread() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20_000, 16, generator=g) + torch.full((16,), 3.0)
    severity = outlier_severity(x)
    assert severity.gamma == pytest.approx(3.0, rel=0.02)  # ‖μ‖ = 3·√16 = 12, ‖σ‖ = √16 = 4
    assert severity.high and not outlier_severity(torch.randn(1000, 16, generator=g)).high


def test_a_high_gamma_site_is_reported_unless_training_centred_it(tiny_llama_dir, text_corpus,
                                                                   tmp_path):  # fmt: skip
    site = Site(3, "attn_out")  # γ ≈ 1.9 in the tiny model
    x = site_rows(tiny_llama_dir, text_corpus, site)
    saes = [saved_sae(tmp_path / init, pca_sae(x, site, metadata={"trainer":
                                                                    {"b_dec_init": init}}))
            for init in ("zeros", "mean")]  # fmt: skip
    zeros, mean = diagnose(_opts(tiny_llama_dir, text_corpus, saes))["saes"]
    outliers = _found(zeros)["preflight_outliers"]
    assert outliers["severity"] in ("info", "warning")
    assert outliers["prescriptions"][0]["field"] == "b_dec_init"
    assert outliers["prescriptions"][0]["new"] == "mean"
    assert zeros["preflight"]["outliers"]["gamma"] >= GAMMA_HIGH
    assert _preflight_ids(zeros) == ["preflight_outliers"]
    assert _preflight_ids(mean) == []


def test_train_warns_in_one_line_before_training_when_gamma_is_high() -> None:
    from rich.console import Console

    from saedoctor.train.config import TrainConfig
    from saedoctor.train.trainer import train_on_activations

    g = torch.Generator().manual_seed(0)
    cfg = TrainConfig(layers=[0], expansion_factor=2, top_k=4, batch_size=2, context=128,
                      shuffle_tokens=1024, training_tokens=1024, checkpoint_every=0,
                      b_dec_init="zeros").validate()  # fmt: skip

    def warnings(offset: float) -> list[str]:
        console = Console(file=io.StringIO(), width=300)
        train_on_activations(cfg, torch.randn(2048, 16, generator=g) + offset, console=console)
        return [ln for ln in console.file.getvalue().splitlines() if "activation outliers" in ln]

    (line,) = warnings(3.0)
    assert line.startswith("warning: activation outliers at blocks.0.hook_resid_post γ=")
    assert float(line.split("γ=")[1].split()[0]) == pytest.approx(3.0, abs=0.05)
    assert "--b-dec-init mean" in line
    assert warnings(0.0) == []


# -- off switches ------------------------------------------------------------------------
def test_preflight_none_turns_every_check_off(tiny_llama_dir, text_corpus, tmp_path, capsys):
    path = _planted(tiny_llama_dir, text_corpus, tmp_path)
    (entry,) = diagnose(_opts(tiny_llama_dir, text_corpus, [path], layer=L - 1,
                              preflight="none"))["saes"]  # fmt: skip
    assert "preflight" not in entry and _preflight_ids(entry) == []
    assert "pre-flight" not in capsys.readouterr().err
    (entry,) = diagnose(_opts(tiny_llama_dir, text_corpus, [path], layer=L - 1,
                              preflight="norm, special"))["saes"]  # fmt: skip
    pre = preflight_of(entry)
    assert pre.checks == ["norm", "special"] and pre.site is None and pre.outliers is None
    assert "preflight_site" not in _found(entry)


def test_preflight_option_parses_all_none_and_lists() -> None:
    assert parse_preflight("ALL") == PREFLIGHT_CHECKS
    assert parse_preflight("none") == ()
    assert parse_preflight(" outliers,site ") == ("site", "outliers")  # run order, not given
    for bad in ("sites", "", "site,,bogus"):
        with pytest.raises(InputError, match="--preflight"):
            parse_preflight(bad)


def test_a_bad_preflight_value_is_one_line_and_exit_2(tiny_llama_dir, text_corpus, tmp_path):
    from typer.testing import CliRunner

    from saedoctor.cli import app

    out = tmp_path / "run.json"
    result = CliRunner().invoke(app, ["diagnose", "--quiet", "--out", str(out), "--model",
                                      str(tiny_llama_dir), "--corpus", str(text_corpus),
                                      "--preflight", "site,bogus"])  # fmt: skip
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "--preflight 'site,bogus'" in lines[0]
    assert not out.exists()


# -- the rules on report blocks ----------------------------------------------------------
def _rule(rule, entry: dict[str, Any]):
    return rule(entry, Context(POLICY, grade_entry(entry, POLICY), {}))


@pytest.mark.parametrize("declared, best, interval, fires", [
    (0.9, 0.2, [0.6, 0.8], True),
    (0.9, 0.55, [0.3, 0.4], False),  # the other site is no fit either
    (0.22, 0.2, [0.01, 0.03], False),  # less than 15 % worse
    (0.9, 0.2, [-0.1, 1.5], False),  # not detectable on these tokens
])  # fmt: skip
def test_site_rule_thresholds(declared, best, interval, fires) -> None:
    check = site_check(declared, best)
    check = type(check)(check.declared, check.candidates, Gap(declared - best, interval))
    found = _rule(preflight_site, with_preflight(make_entry(layer=9), site=check))
    assert (found is not None) == fires


def test_norm_rule_scan_record_and_near_misses() -> None:
    assert _rule(preflight_norm, with_preflight(make_entry(), norm=norm_check()))["severity"] \
        == "critical"  # fmt: skip
    assert _rule(preflight_norm, with_preflight(make_entry(), norm=norm_check(scale=1.5))) is None
    assert _rule(preflight_norm, with_preflight(make_entry(), site=site_check(),
                                                norm=norm_check())) is None  # fmt: skip
    recorded = NormHint("saedoctor trainer input_scale", "centred_rms", 9.2, recorded=True)
    quiet_scan = norm_check(at_one=0.2, best=0.2, scale=1.0, hints=[recorded])
    found = _rule(preflight_norm, with_preflight(make_entry(), norm=quiet_scan))
    assert found["severity"] == "warning" and found["prescriptions"][0]["new"] == 0.1
    near = NormHint("saedoctor trainer input_scale", "centred_rms", 60.0, recorded=True)
    quiet_near = norm_check(at_one=0.2, best=0.2, scale=1.0, hints=[near])  # ×1.5: no
    assert _rule(preflight_norm, with_preflight(make_entry(), norm=quiet_near)) is None


def test_special_and_outlier_rules_fire_only_on_their_evidence() -> None:
    fires = _rule(preflight_special, with_preflight(make_entry(), special=special_check()))
    assert fires["severity"] == "warning"
    for check in (special_check(evaluated_with=False), special_check(fvu_with=0.25)):
        assert _rule(preflight_special, with_preflight(make_entry(), special=check)) is None
    info = _rule(preflight_outliers, with_preflight(make_entry(), outliers=outlier_check()))
    dead = make_entry(dead_pct=67.0, tokens_seen=1_000_000)
    warning = _rule(preflight_outliers, with_preflight(dead, outliers=outlier_check()))
    assert (info["severity"], warning["severity"]) == ("info", "warning")
    for check in (outlier_check(gamma=0.9), outlier_check(b_dec_init="mean")):
        assert _rule(preflight_outliers, with_preflight(make_entry(), outliers=check)) is None
    unknown = _rule(preflight_outliers, with_preflight(make_entry(),
                                                       outliers=outlier_check(b_dec_init=None)))
    assert any("does not say" in line for line in unknown["evidence"])


def test_preflight_block_round_trips_and_a_malformed_one_is_ignored() -> None:
    pre = Preflight(512, list(PREFLIGHT_CHECKS), site=site_check(), norm=norm_check(),
                    special=special_check(), outliers=outlier_check())  # fmt: skip
    assert preflight_of({"preflight": pre.to_dict()}) == pre
    for bad in ({"tokens": 1}, {"tokens": 1, "checks": [], "site": 3}, "x"):
        assert preflight_of({"preflight": bad}) is None


def test_preflight_prescriptions_are_diagnose_changes_that_train_skips() -> None:
    from saedoctor.train.prescription import NOT_TRAINING, apply_prescriptions, base_config

    entry = with_preflight(make_entry(layer=9, trainer={"k": 32}), site=site_check(),
                           special=special_check())  # fmt: skip
    found = [_rule(r, entry) for r in (preflight_site, preflight_special)]
    prescriptions = [p for d in found for p in d["prescriptions"]]
    assert {p["field"] for p in prescriptions} <= set(NOT_TRAINING)
    _, changes, skipped = apply_prescriptions(base_config(entry, {}), prescriptions, "t", 576)
    assert changes == [] and {f for f, _ in skipped} == {"eval_site", "eval_include_special"}


# -- the embedded default ----------------------------------------------------------------
@pytest.mark.slow
def test_the_default_sae_read_one_block_off_is_caught_and_block_10_named() -> None:
    """`--layer 9` for the shipped layer-10 SAE on SmolLM2-135M: FVU ≈ 0.30 one block off vs
    ≈ 0.23 at its own block (adjacent residual streams are alike, yet 1.3× apart), and the
    right block and site are named; read where it belongs, nothing fires."""
    from saedoctor import defaults
    from saedoctor.activations.model import load_model

    loaded = load_model(None)
    base = dict(saes=[str(defaults.default_sae_dir())], tokens=512, downstream=False,
                quiet=True, explain_tokens=512)  # fmt: skip
    layer = defaults.DEFAULT_LAYER
    for off in (layer - 1, layer + 1):
        (entry,) = diagnose(DiagnoseOptions(layer=off, **base), loaded_model=loaded)["saes"]
        site = _found(entry)["preflight_site"]
        assert site["severity"] == "critical"
        assert site["prescriptions"][0]["new"] == f"blocks.{layer}.hook_resid_post"
        assert f"rerun with --layer {layer} --site resid_post" in site["prescriptions"][0]["why"]
    (entry,) = diagnose(DiagnoseOptions(**base), loaded_model=loaded)["saes"]
    assert _preflight_ids(entry) == []
    pre = preflight_of(entry)
    assert pre.site.declared.fvu < min(c.fvu for c in pre.site.candidates)
    assert pre.norm.best.scale == 1.0
