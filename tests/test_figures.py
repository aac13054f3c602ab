"""Published figures come from committed result files (benchmarks/figures.py, _results.py).

Fast: no benchmark runs. The result documents and figures below are invented for the tests,
except in the two tests that read the repository's own README.md, docs/ and results/.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _results  # noqa: E402
import figures  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# -- (a) and (c): the repository itself -----------------------------------------------------
def test_repository_figures_match_their_result_files() -> None:
    problems = figures.check(REPO)
    assert problems == [], "\n".join(p.show(REPO) for p in problems)


def test_every_cited_result_file_carries_the_envelope_and_five_runs() -> None:
    cited, malformed = figures.collect(REPO)
    assert malformed == []
    results = REPO / "benchmarks" / "results"
    for name in sorted({fig.file for fig in cited}):
        document = json.loads((results / name).read_text(encoding="utf-8"))
        assert _results.document_problems(document) == [], name


# -- (b): a hand-edited figure is caught ------------------------------------------------------
# Invented numbers: a result file and the Markdown that quotes it.
RESULT = {
    "benchmark": "toy", "machine": {"cpu_model": "x"}, "versions": {"python": "3.11"},
    "date": "2026-01-01T00:00:00+00:00", "duration_s": 1.0, "command": ".venv/bin/python x.py",
    "quick": False,
    "wall": {"runs": [80.0, 82.0, 85.0, 90.0, 81.0], "median": 82.0, "min": 80.0, "max": 90.0,
             "n": 5},
    "ratio": {"runs": [5.2, 5.3, 5.3, 5.4, 5.25], "median": 5.284, "min": 5.2, "max": 5.4,
              "n": 5},
    "rows": {"b_dec_init only": {"dead_pct": 0.1, "variance_explained": 0.6231}},
    "tokens": 16384,
}  # fmt: skip
README = """# toy

Measured: <!-- fig toy.json wall.median s0 -->82 s<!-- /fig --> per run, **<!-- fig toy.json
ratio.median x1 -->5.3×<!-- /fig --> faster** on <!-- fig toy.json tokens int_sp -->16
384<!-- /fig --> tokens.

| SAE | dead % | variance explained |
|---|---|---|
| b_dec_init only | <!-- fig toy.json rows["b_dec_init only"].dead_pct .1f -->0.1<!-- /fig --> | <!-- fig toy.json rows["b_dec_init only"].variance_explained .3f -->0.623<!-- /fig --> |

```
<!-- fig toy.json nothing.here .3f -->not checked: inside a code block<!-- /fig -->
```
The syntax is `<!-- fig FILE KEY FORMAT -->TEXT<!-- /fig -->` (inline code: not checked).
"""  # noqa: E501


def toy_repo(root: Path, readme: str = README) -> Path:
    (root / "benchmarks" / "results").mkdir(parents=True)
    (root / "benchmarks" / "results" / "toy.json").write_text(json.dumps(RESULT))
    (root / "docs" / "sub").mkdir(parents=True)
    (root / "docs" / "sub" / "more.md").write_text(
        "L0 is <!-- fig toy.json wall.runs[-1] int -->81<!-- /fig -->.\n"
    )
    (root / "README.md").write_text(readme)
    return root


def test_unedited_figures_pass(tmp_path: Path) -> None:
    root = toy_repo(tmp_path)
    cited, malformed = figures.collect(root)
    assert malformed == []
    assert [(f.doc.name, f.line) for f in cited] == [
        ("README.md", 3), ("README.md", 3), ("README.md", 4), ("README.md", 9),
        ("README.md", 9), ("more.md", 1)]  # fmt: skip
    assert figures.check(root) == []
    assert figures.main(["--check", "--root", str(root)]) == 0


def test_a_hand_edited_figure_is_caught_naming_its_line(tmp_path: Path, capsys) -> None:
    root = toy_repo(tmp_path)
    readme = root / "README.md"
    lines = readme.read_text().split("\n")
    assert "-->0.623<!--" in lines[8]
    lines[8] = lines[8].replace("-->0.623<!--", "-->0.653<!--")  # the hand edit
    readme.write_text("\n".join(lines))

    problems = figures.check(root)
    assert [(p.doc.name, p.line) for p in problems] == [("README.md", 9)]
    assert "shows '0.653'" in problems[0].message and "gives '0.623'" in problems[0].message
    assert 'rows["b_dec_init only"].variance_explained' in problems[0].message

    assert figures.main(["--check", "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("README.md:9: ")


def test_an_edited_figure_in_a_reflowed_paragraph_is_caught(tmp_path: Path) -> None:
    root = toy_repo(tmp_path, README.replace("-->16\n384<!--", "-->16\n385<!--"))
    problems = figures.check(root)
    assert [(p.line, "shows '16 385'" in p.message) for p in problems] == [(4, True)]


def test_update_rewrites_stale_figures_and_leaves_code_alone(tmp_path: Path) -> None:
    stale = README.replace("-->0.623<!--", "-->0.653<!--").replace("-->16\n384<!--", "-->9<!--")
    root = toy_repo(tmp_path, stale)
    assert len(figures.check(root)) == 2
    changed = figures.update(root)
    assert len(changed) == 2 and "'0.653' -> '0.623'" in changed[-1] + changed[0]
    assert figures.check(root) == []
    text = (root / "README.md").read_text()
    assert "-->16 384<!--" in text
    assert "not checked: inside a code block" in text
    assert figures.update(root) == []


def test_missing_file_key_and_malformed_markers_are_reported(tmp_path: Path) -> None:
    broken = (
        "a <!-- fig nope.json wall.median s0 -->82 s<!-- /fig -->\n"
        "b <!-- fig toy.json wall.mean s0 -->82 s<!-- /fig -->\n"
        "c <!-- fig toy.json wall.runs[9] s0 -->82 s<!-- /fig -->\n"
        "d <!-- fig toy.json wall.median -->82 s<!-- /fig -->\n"
        "e <!-- fig toy.json wall.median s0 -->82 s\n"
        "f <!-- fig toy.json wall.median bogus -->82<!-- /fig -->\n"
        "g 82 s<!-- /fig -->\n"
        "h <!-- fig ../../etc/passwd x str -->x<!-- /fig -->\n"
    )  # fmt: skip
    root = toy_repo(tmp_path, broken)
    shown = {p.line: p.message for p in figures.check(root)}
    assert "no result file" in shown[1]
    assert "wall.mean: not found" in shown[2]
    assert "index out of range" in shown[3]
    assert "expected <!-- fig FILE KEY FORMAT -->" in shown[4]
    assert "without its closing" in shown[5]
    assert "unknown format 'bogus'" in shown[6]
    assert "without an opening" in shown[7]
    assert "outside" in shown[8]
    assert len(shown) == 8


def test_a_cited_file_without_envelope_or_runs_is_reported(tmp_path: Path) -> None:
    root = toy_repo(tmp_path)
    bare = {k: v for k, v in RESULT.items() if k != "machine"}
    bare["wall"] = {"runs": [82.0, 83.0], "median": 82.5, "min": 82.0, "max": 83.0, "n": 2}
    (root / "benchmarks" / "results" / "toy.json").write_text(json.dumps(bare))
    (root / "docs" / "sub" / "more.md").unlink()
    (root / "README.md").write_text("<!-- fig toy.json wall.median .1f -->82.5<!-- /fig -->\n")
    messages = [p.message for p in figures.check(root)]
    assert messages == [
        "toy.json: no 'machine' in the envelope",
        "toy.json: wall: 2 runs (fewer than 5) and no fewer_runs_reason",
    ]


# -- (c): the envelope and the timing rule ---------------------------------------------------
def test_document_problems_on_planted_documents() -> None:
    assert _results.document_problems(RESULT) == []
    no_reason = {**RESULT, "t": {"runs": [1.0, 2.0], "median": 1.5}}
    assert _results.document_problems(no_reason) == [
        "t: 2 runs (fewer than 5) and no fewer_runs_reason"
    ]
    with_reason = {**RESULT, "t": [{"runs": [1.0], "median": 1.0, "fewer_runs_reason": "slow"}]}
    assert _results.document_problems(with_reason) == []
    nested = {**RESULT, "a": {"b": [{}, {"runs": [1.0], "median": 1.0}]}}
    assert _results.document_problems(nested) == [
        "a.b[1]: 1 runs (fewer than 5) and no fewer_runs_reason"
    ]
    assert _results.document_problems({**RESULT, "quick": True}) == [
        "a --quick smoke run, not a measurement"
    ]
    missing = {k: v for k, v in RESULT.items() if k not in ("date", "command")}
    assert _results.document_problems(missing) == [
        "no 'date' in the envelope",
        "no 'command' in the envelope",
    ]


def test_timing_median_min_max_and_the_five_run_rule() -> None:
    block = _results.timing([3.0, 1.0, 2.0, 5.0, 4.0])
    assert block == {"runs": [3.0, 1.0, 2.0, 5.0, 4.0], "median": 3.0, "min": 1.0, "max": 5.0,
                     "n": 5}  # fmt: skip
    assert _results.timing([1.0, 2.0, 3.0, 10.0, 20.0, 30.0])["median"] == 6.5
    with pytest.raises(ValueError, match="at least 5"):
        _results.timing([1.0, 2.0, 3.0, 4.0])
    short = _results.timing([1.0, 3.0], allow_fewer="each run takes 10 minutes")
    assert short["median"] == 2.0 and short["fewer_runs_reason"] == "each run takes 10 minutes"
    assert "fewer_runs_reason" not in _results.timing([1.0] * 5, allow_fewer="unused")
    assert _results.fewer_reason(5, quick=True) is None
    assert _results.fewer_reason(2, quick=True) == _results.QUICK_REASON
    assert _results.fewer_reason(3, quick=False) == "3 runs asked for on the command line"


def test_alternate_interleaves_after_a_warm_up() -> None:
    calls: list[str] = []

    def side(name: str, value: float):
        def run() -> float:
            calls.append(name)
            return value + len(calls)

        return run

    runs = _results.alternate({"A": side("A", 0.0), "B": side("B", 100.0)}, 3, warmup=1)
    assert calls == ["A", "B", "A", "B", "A", "B", "A", "B"]
    assert runs == {"A": [3.0, 5.0, 7.0], "B": [104.0, 106.0, 108.0]}  # warm-up not recorded
    assert _results.paired_ratios([2.0, 9.0], [1.0, 3.0]) == [2.0, 3.0]


def test_envelope_and_writer(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.delenv("CI", raising=False)
    argv = [str(REPO / "benchmarks" / "toy.py"), "--tokens", "4 096"]
    assert _results.command(argv) == "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/toy.py " \
                                     "--tokens '4 096'"  # fmt: skip
    assert shlex.split(_results.command(argv))[3:] == ["--tokens", "4 096"]
    monkeypatch.setenv("CI", "1")  # recorded: under CI a missing peer fails instead of skipping
    assert _results.command(argv).startswith("OMP_NUM_THREADS=1 CI=1 .venv/bin/python ")
    monkeypatch.setattr(sys, "argv", argv)
    path = _results.write_result("toy", {"wall": _results.timing([1.0] * 5)}, tmp_path,
                                 started=0.0, quick=False, markdown="| a |\n")  # fmt: skip
    document = json.loads(path.read_text())
    assert list(document)[:7] == list(_results.ENVELOPE_KEYS)
    assert document["date"] == "1970-01-01T00:00:00+00:00"
    assert document["command"].endswith("benchmarks/toy.py --tokens '4 096'")
    assert "hostname" not in json.dumps(document["machine"]).lower()
    assert document["machine"]["logical_cores"] >= 1 and document["versions"]["torch"]
    assert _results.document_problems(document) == []
    assert (tmp_path / "toy.md").read_text() == "| a |\n"
    with pytest.raises(ValueError, match="overwrite the envelope"):
        _results.write_result("toy", {"date": 1}, tmp_path, started=0.0, quick=False)


def test_quick_runs_never_write_into_the_results_folder() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    _results.add_arguments(parser)
    assert _results.out_dir(parser.parse_args([])) == _results.RESULTS_DIR
    assert _results.out_dir(parser.parse_args(["--quick"])) != _results.RESULTS_DIR
    with pytest.raises(SystemExit, match="--quick results do not go into"):
        _results.out_dir(parser.parse_args(["--quick", "--out", str(_results.RESULTS_DIR)]))


# -- (d): the formatters ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "fmt", "text"),
    [
        (0.6712, "pct1", "67.1"), (0.936, "pct0", "94"), (0.93567, "pct2", "93.57"),
        (5.284, "x1", "5.3×"), (2.449, "x2", "2.45×"),
        (345.6, "mmss", "5 min 46 s"), (46.2, "mmss", "46 s"), (900.0, "mmss", "15 min 0 s"),
        (59.6, "mmss", "1 min 0 s"),
        (12443.4, "int_sp", "12 443"), (1894, "int_sp", "1 894"), (576, "int_sp", "576"),
        (1_000_000, "int_sp", "1 000 000"),
        (4.12e-6, "e1", "4.1e-6"), (1.0e-5, "e1", "1.0e-5"), (0.0, "e1", "0"),
        (5.94e-6, "e2", "5.94e-6"), (123.0, "e1", "1.2e2"),
        (82.3, "s0", "82 s"), (99.54, "s1", "99.5 s"), (0.142, "s2", "0.14 s"),
        (0.7812, ".3f", "0.781"), (12443.0, ",.0f", "12,443"), (0.671, ".2%", "67.10%"),
        (870.24, ".1f", "870.2"), (32.0, "int", "32"), (4608, "d", "4608"),
        ([3, 9, 12], "len", "3"), ("python-code@train", "str", "python-code@train"),
    ],
)  # fmt: skip
def test_formatters_on_known_values(value, fmt: str, text: str) -> None:
    assert figures.format_value(value, fmt) == text


@pytest.mark.parametrize(("value", "fmt"), [("0.5", "pct1"), (float("nan"), ".3f"),
                                            (True, "x2"), (1.5, "bogus"), (3, "len")])  # fmt: skip
def test_formatters_refuse_what_they_cannot_show(value, fmt: str) -> None:
    with pytest.raises((TypeError, ValueError)):
        figures.format_value(value, fmt)


def test_every_named_formatter_is_documented_and_tested() -> None:
    tested = {"pct0", "pct1", "pct2", "x1", "x2", "mmss", "int_sp", "e1", "e2", "s0", "s1",
              "s2", "int", "len", "str"}  # fmt: skip
    assert set(figures.FORMATTERS) == tested
    assert all(doc for _, doc in figures.FORMATTERS.values())


# -- helpers the benchmarks share ------------------------------------------------------------
def test_keys_with_brackets_and_spaces_resolve() -> None:
    document = {"max_rel_diff": {"density[]": 0.125}, "rows": {"a b": {"x": [1, 2]}}}
    assert figures.resolve(document, 'max_rel_diff["density[]"]') == 0.125
    assert figures.resolve(document, 'rows["a b"].x[-1]') == 2


def test_pytest_summary_counts() -> None:
    import test_time

    line = "=== 3 failed, 120 passed, 2 skipped, 1 error, 4 warnings in 9.12s (0:00:09) ==="
    assert test_time.pytest_counts(f"....\n{line}\n") == {
        "failed": 3, "passed": 120, "skipped": 2, "errors": 1, "warnings": 4}  # fmt: skip
    assert test_time.pytest_counts("collected 0 items\n") == {}


def test_measured_child_keeps_its_lines_and_their_times(tmp_path: Path) -> None:
    import _proc

    script = "import sys, time; print('one', flush=True); time.sleep(0.5); print('two')"
    done = _proc.run_measured([sys.executable, "-c", script], log=tmp_path / "log")
    assert done.returncode == 0 and done.text() == "one\ntwo\n"
    (t1, first), (t2, second) = done.timeline
    assert (first, second) == ("one", "two") and t2 - t1 >= 0.4 and t2 <= done.wall_s
    assert done.first_line(skip=("one",)) == (t2, "two")
    assert done.peak_rss_mib > 1
