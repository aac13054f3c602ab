"""The report JSON Schema: real-shaped reports validate, anything else fails in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from preflight_cases import norm_check, outlier_check, site_check, special_check, with_preflight
from saedoctor.errors import InputError
from saedoctor.report.document import read_report, write_report
from saedoctor.report.schema import validate_report
from test_report_data import finllama, goodfire, llama_sweep, sample_like


@pytest.mark.parametrize("build", [sample_like, llama_sweep, finllama, goodfire])
def test_constructed_reports_validate(build) -> None:
    validate_report(build(), "report.json")


def test_read_report_round_trip(tmp_path: Path) -> None:
    path = write_report(finllama(), tmp_path / "run.json")
    assert read_report(path)["saes"][0]["grading"]["grade"] == "poor"


def one_line_error(tmp_path: Path, document: object) -> str:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    with pytest.raises(InputError) as err:
        read_report(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    return message


def test_non_report_json_fails(tmp_path: Path) -> None:
    message = one_line_error(tmp_path, {"name": "package.json", "version": "1.0"})
    assert "not a saedoctor report" in message


def test_wrong_typed_metric_names_path_and_expectation(tmp_path: Path) -> None:
    document = sample_like()
    document["saes"][0]["metrics"]["l0"] = "thirty-two"
    message = one_line_error(tmp_path, document)
    assert "$.saes[0].metrics.l0" in message
    assert "expected number or null, got string" in message


def test_bad_always_on_ids_fail(tmp_path: Path) -> None:
    document = sample_like()
    document["saes"][0]["metrics"]["always_on_features"] = [1.5]
    assert "$.saes[0].metrics.always_on_features[0]" in one_line_error(tmp_path, document)


def test_missing_required_entry_field(tmp_path: Path) -> None:
    document = sample_like()
    del document["saes"][0]["density_histogram"]
    message = one_line_error(tmp_path, document)
    assert "$.saes[0]" in message and "'density_histogram'" in message


def test_bad_status_is_rejected(tmp_path: Path) -> None:
    document = llama_sweep()
    document["saes"][0]["grading"]["statuses"]["l0"]["status"] = "meh"
    message = one_line_error(tmp_path, document)
    assert "$.saes[0].grading.statuses.l0.status" in message and "expected one of" in message


def test_other_schema_version_is_named(tmp_path: Path) -> None:
    document = sample_like()
    document["schema"] = "saedoctor.report/2"
    assert '"saedoctor.report/2" is not supported' in one_line_error(tmp_path, document)


def test_future_metric_keys_are_allowed() -> None:
    document = sample_like()
    document["saes"][0]["metrics"]["loss_recovered"] = 0.81
    document["saes"][0]["metrics"]["some_future_metric"] = 1.0
    document["run"]["new_run_field"] = {"x": 1}
    validate_report(document, "r.json")


def test_not_json_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not a JSON report"):
        read_report(bad)
    with pytest.raises(InputError, match="no such report file"):
        read_report(tmp_path / "missing.json")


def test_preflight_block_validates_and_a_wrong_typed_one_fails(tmp_path: Path) -> None:
    document = sample_like()
    with_preflight(document["saes"][0], site=site_check(), norm=norm_check(),
                   special=special_check(), outliers=outlier_check())  # fmt: skip
    validate_report(document, "r.json")
    document["saes"][0]["preflight"]["site"]["declared"]["fvu"] = "0.3"
    message = one_line_error(tmp_path, document)
    assert "$.saes[0].preflight.site.declared.fvu" in message
