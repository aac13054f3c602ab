"""Bad input: exit code 2, one clear line naming the input, and no report left behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import random_sae, saved_sae
from typer.testing import CliRunner

from saedoctor.cli import app
from saedoctor.sae.site import Site


def _diagnose(args: list[str], out: Path):
    result = CliRunner().invoke(app, ["diagnose", "--quiet", "--out", str(out), *args])
    return result


def _assert_bad_input(result, out: Path, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("saedoctor: error:")
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}*"))


@pytest.fixture()
def common(tiny_llama_dir, text_corpus):
    return [
        "--model",
        str(tiny_llama_dir),
        "--corpus",
        str(text_corpus),
        "--tokens",
        "128",
        "--context",
        "32",
    ]


def test_missing_sae_path(tmp_path, common):
    out = tmp_path / "run.json"
    _assert_bad_input(_diagnose([*common, "--sae", str(tmp_path / "nope")], out), out, "nope")


def test_unknown_format(tmp_path, common):
    d = tmp_path / "weird"
    d.mkdir()
    (d / "notes.txt").write_text("hello")
    out = tmp_path / "run.json"
    _assert_bad_input(_diagnose([*common, "--sae", str(d)], out), out, str(d))


def test_corrupt_safetensors(tmp_path, common):
    d = saved_sae(tmp_path / "s", random_sae(64, 128, site=Site(1)))
    weights = d / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    out = tmp_path / "run.json"
    _assert_bad_input(_diagnose([*common, "--sae", str(d)], out), out, "sae_weights.safetensors")


def test_d_in_differs_from_model_width(tmp_path, common):
    d = saved_sae(tmp_path / "s", random_sae(32, 128, site=Site(1)))
    out = tmp_path / "run.json"
    _assert_bad_input(_diagnose([*common, "--sae", str(d)], out), out, "d_in=32", "64")


def test_nan_in_weights(tmp_path, common):
    sae = random_sae(64, 128, site=Site(1))
    with torch.no_grad():
        sae.W_dec[3, 5] = float("nan")
    d = tmp_path / "s"
    d.mkdir()
    from safetensors.torch import save_file

    good = saved_sae(tmp_path / "good", random_sae(64, 128, site=Site(1)))
    (d / "cfg.json").write_text((good / "cfg.json").read_text())
    save_file(
        {k: v.contiguous() for k, v in sae.weights().items()}, str(d / "sae_weights.safetensors")
    )
    out = tmp_path / "run.json"
    _assert_bad_input(_diagnose([*common, "--sae", str(d)], out), out, "NaN")


def test_empty_corpus(tmp_path, tiny_llama_dir):
    corpus = tmp_path / "empty.jsonl"
    corpus.write_text("")
    d = saved_sae(tmp_path / "s", random_sae(64, 128, site=Site(1)))
    out = tmp_path / "run.json"
    args = ["--model", str(tiny_llama_dir), "--corpus", str(corpus), "--sae", str(d)]
    _assert_bad_input(_diagnose(args, out), out, "empty.jsonl")


def test_layer_out_of_range(tmp_path, common):
    d = saved_sae(tmp_path / "s", random_sae(64, 128, site=Site(9)))
    out = tmp_path / "run.json"
    _assert_bad_input(_diagnose([*common, "--sae", str(d)], out), out, "layer 9", "0..3")


def test_bad_flag_values(tmp_path, common):
    d = saved_sae(tmp_path / "s", random_sae(64, 128, site=Site(1)))
    out = tmp_path / "run.json"
    _assert_bad_input(
        _diagnose([*common, "--sae", str(d), "--site", "resid_mid"], out), out, "--site"
    )
    _assert_bad_input(_diagnose([*common, "--sae", str(d), "--tokens", "0"], out), out, "--tokens")


def test_good_run_writes_report(tmp_path, common):
    d = saved_sae(tmp_path / "s", random_sae(64, 128, site=Site(1)))
    out = tmp_path / "run.json"
    result = _diagnose([*common, "--sae", str(d)], out)
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["schema"] == "saedoctor.report/1"
    assert "variance explained" in result.output


def _run(args: list[str]):
    return CliRunner().invoke(app, args)


def test_report_on_non_report_json(tmp_path):
    bad = tmp_path / "other.json"
    bad.write_text('{"hello": 1}')
    out = tmp_path / "x.html"
    _assert_bad_input(_run(["report", str(bad), "--html", str(out)]), out, "other.json")


def test_policy_typo_fails_before_streaming(tmp_path, common):
    policy = tmp_path / "policy.toml"
    policy.write_text('[dead_pcnt]\nwarning = ["> 10"]\n')
    d = saved_sae(tmp_path / "s", random_sae(64, 128, site=Site(1)))
    out = tmp_path / "run.json"
    result = _diagnose([*common, "--sae", str(d), "--policy", str(policy)], out)
    _assert_bad_input(result, out, "policy.toml", "dead_pct")


def test_impossible_band_in_policy(tmp_path, common):
    policy = tmp_path / "policy.toml"
    policy.write_text('[l0]\ngood = ["300..20"]\n')
    d = saved_sae(tmp_path / "s", random_sae(64, 128, site=Site(1)))
    out = tmp_path / "run.json"
    result = _diagnose([*common, "--sae", str(d), "--policy", str(policy)], out)
    _assert_bad_input(result, out, "policy.toml", "300..20")


def test_fail_on_poor_gates_and_views_rerender(tmp_path, common):
    # A random SAE on a random model reconstructs badly: graded poor.
    d = saved_sae(tmp_path / "s", random_sae(64, 128, site=Site(1)))
    out, md = tmp_path / "run.json", tmp_path / "run.md"
    result = _diagnose([*common, "--sae", str(d), "--fail-on", "poor", "--md", str(md)], out)
    assert result.exit_code == 1, result.output
    report = json.loads(out.read_text())
    assert report["saes"][0]["grading"]["grade"] == "poor"
    # Re-rendering from the JSON alone gives the same Markdown, and the same gate.
    md2 = tmp_path / "again.md"
    again = _run(["report", str(out), "--md", str(md2), "--fail-on", "poor"])
    assert again.exit_code == 1
    assert md2.read_text() == md.read_text()
    assert _run(["report", str(out), "--md", str(md2)]).exit_code == 0


def test_compare_rejects_mismatched_schema_and_filter_lists_ids(tmp_path, common):
    d = saved_sae(tmp_path / "s", random_sae(64, 128, site=Site(1)))
    out = tmp_path / "run.json"
    assert _diagnose([*common, "--sae", str(d)], out).exit_code == 0
    other = json.loads(out.read_text())
    other["schema"] = "saedoctor.report/2"
    (tmp_path / "v2.json").write_text(json.dumps(other))
    cmp_out = tmp_path / "cmp.md"
    result = _run(["compare", str(out), str(tmp_path / "v2.json"), "--md", str(cmp_out)])
    _assert_bad_input(result, cmp_out, "v2.json")
    filtered = _run(["filter", str(out)])
    assert filtered.exit_code == 0
    ids = json.loads(filtered.output)
    report = json.loads(out.read_text())
    (sae_filter,) = ids["always_on"].values()
    listed = sorted(feature["id"] for feature in sae_filter["features"])
    assert listed == sorted(report["saes"][0]["metrics"]["always_on_features"])


def test_bad_fail_on_value(tmp_path, common):
    d = saved_sae(tmp_path / "s", random_sae(64, 128, site=Site(1)))
    out = tmp_path / "run.json"
    _assert_bad_input(_diagnose([*common, "--sae", str(d), "--fail-on", "bad"], out), out,
                      "--fail-on")  # fmt: skip
