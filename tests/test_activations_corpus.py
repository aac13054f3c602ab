"""Corpora: builtin stdlib corpora, local files and directories, saved HF datasets."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from saedoctor.activations import corpus
from saedoctor.activations.corpus import is_test_key, iter_documents, stdlib_sources
from saedoctor.errors import InputError

# ---- builtin corpora on the real stdlib -----------------------------------------------------


@pytest.mark.parametrize("name", ["python-docs", "python-code"])
def test_builtin_corpus_is_deterministic_and_nonempty(name: str) -> None:
    first = list(islice(iter_documents(name), 200))
    again = list(islice(iter_documents(name), 200))
    assert len(first) == 200 and first == again
    assert all(isinstance(d, str) and d.strip() for d in first)


def test_python_code_split_is_disjoint_and_complete() -> None:
    train = list(iter_documents("python-code@train"))
    test = list(iter_documents("python-code", split="test"))
    whole = list(iter_documents("python-code"))
    assert len(train) + len(test) == len(whole)
    assert not set(train) & set(test)
    assert 0.03 < len(test) / len(whole) < 0.2


def test_python_docs_split_partitions_documents() -> None:
    train = sum(1 for _ in iter_documents("python-docs@train"))
    test = sum(1 for _ in iter_documents("python-docs@test"))
    whole = sum(1 for _ in iter_documents("python-docs"))
    assert train + test == whole and test > 0
    assert 0.03 < test / whole < 0.2


def test_stdlib_sources_skip_tests_and_packages() -> None:
    parts = {part for p in stdlib_sources() for part in p.parts}
    assert not parts & {"test", "tests", "idle_test", "site-packages"}
    assert any(p.name == "ast.py" for p in stdlib_sources())


def test_split_hash_is_stable() -> None:
    # sha256-based, so independent of PYTHONHASHSEED and of the run.
    assert [is_test_key(k) for k in ("a", "json/decoder.py")] == [
        is_test_key(k) for k in ("a", "json/decoder.py")
    ]
    share = sum(is_test_key(f"k{i}") for i in range(10_000)) / 10_000
    assert 0.08 < share < 0.12


@pytest.mark.parametrize("spec", ["python-docs@dev", "python-code@"])
def test_bad_builtin_split(spec: str) -> None:
    with pytest.raises(InputError, match=f"corpus {spec}"):
        iter_documents(spec)


def test_conflicting_split() -> None:
    with pytest.raises(InputError, match="contradicts"):
        iter_documents("python-docs@train", split="test")


# ---- builtin corpora on a fake stdlib: exact contents ------------------------------------------


@pytest.fixture
def fake_stdlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    files = {
        "alpha.py": '"""Alpha module."""\n\nclass A:\n    """Class A."""\n\n'
        '    def f(self):\n        """Method f."""\n\nasync def g():\n    """Coroutine g."""\n',
        "pkg/__init__.py": "",
        "pkg/beta.py": "def h():\n    '''Beta h.'''\n",
        "broken.py": "def (:\n",
        "test/test_alpha.py": '"""A test."""\n',
        "idlelib/idle_test/t.py": '"""Idle test."""\n',
        "site-packages/third.py": '"""Third party."""\n',
        "pydoc_data/topics.py": "topics = {'zeta': 'Zeta topic.\\n', 'assert': 'The assert"
        " statement.\\n', 'empty': '  '}\n",
    }
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp_path / "latin1.py").write_bytes(b'"""caf\xe9"""\n')  # not UTF-8: skipped
    monkeypatch.setattr(corpus, "stdlib_dir", lambda: tmp_path)
    return tmp_path


def test_python_docs_exact(fake_stdlib: Path) -> None:
    docs = list(iter_documents("python-docs"))
    assert docs == [
        "Alpha module.",
        "Class A.",
        "Coroutine g.",
        "Method f.",
        "Beta h.",
        "The assert statement.\n",
        "Zeta topic.\n",
    ]


def test_python_code_exact(fake_stdlib: Path) -> None:
    docs = list(iter_documents("python-code"))
    assert docs[0].startswith('"""Alpha') and docs[-1] == "def h():\n    '''Beta h.'''\n"
    assert len(docs) == 3  # alpha, broken (code corpus keeps unparsable text), beta
    assert not any("Third party" in d or "A test" in d or "topics" in d for d in docs)


# ---- local files -----------------------------------------------------------------------------


def test_txt_documents(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("one\n\nstill one\n\n\ntwo\n\f\nthree\n \n\t\n\n\nfour\n")
    assert list(iter_documents(str(path))) == ["one\n\nstill one", "two", "three", "four"]


def test_jsonl_documents_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "x"}\n\n{"body": "y", "text": "z"}\n')
    assert list(iter_documents(str(path))) == ["x", "z"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x"}\n{"content": "y"}\n')
    with pytest.raises(InputError, match=r"bad\.jsonl line 2: expected .* 'text' field"):
        list(iter_documents(str(bad)))
    bad.write_text("not json\n")
    with pytest.raises(InputError, match=r"bad\.jsonl line 1: not valid JSON"):
        list(iter_documents(str(bad)))
    bad.write_text('{"text": 3}\n')
    with pytest.raises(InputError, match="is int, expected str"):
        list(iter_documents(str(bad)))


def _write_parquet(path: Path, texts: list[str | None], column: str = "text") -> None:
    table = pa.table({column: texts, "n": list(range(len(texts)))})
    pq.write_table(table, path, row_group_size=2)


def test_parquet_documents(tmp_path: Path) -> None:
    path = tmp_path / "a.parquet"
    _write_parquet(path, ["a", None, "b", " ", "c"])
    assert list(iter_documents(str(path))) == ["a", "b", "c"]
    with pytest.raises(InputError, match=r"a\.parquet: no column 'body' \(columns: text, n\)"):
        iter_documents(str(path), text_field="body")


def test_directory_of_files(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "a.txt").write_text("from txt")
    (tmp_path / "b" / "c.jsonl").write_text('{"text": "from jsonl"}\n')
    _write_parquet(tmp_path / "b" / "d.parquet", ["from parquet"])
    (tmp_path / "README.md").write_text("ignored")
    (tmp_path / ".hidden" / "e.txt").write_text("ignored too")
    assert list(iter_documents(str(tmp_path))) == ["from txt", "from jsonl", "from parquet"]


def test_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="directory holds no"):
        iter_documents(str(tmp_path))


def test_saved_hf_dataset(tmp_path: Path) -> None:
    import datasets

    ds = datasets.Dataset.from_dict({"text": ["p", "q"], "other": [1, 2]})
    ds.save_to_disk(str(tmp_path / "one"))
    assert list(iter_documents(str(tmp_path / "one"))) == ["p", "q"]
    dd = datasets.DatasetDict({"train": ds, "test": ds.select([1])})
    dd.save_to_disk(str(tmp_path / "two"))
    assert list(iter_documents(str(tmp_path / "two"), split="test")) == ["q"]
    with pytest.raises(InputError, match="no split 'dev'"):
        iter_documents(str(tmp_path / "two"), split="dev")
    with pytest.raises(InputError, match="no column 'body'"):
        iter_documents(str(tmp_path / "one"), text_field="body")


def test_missing_and_unknown_files(tmp_path: Path) -> None:
    with pytest.raises(
        InputError, match=r"corpus data/missing\.jsonl: file or directory not found"
    ):
        iter_documents("data/missing.jsonl")
    odd = tmp_path / "a.csv"
    odd.write_text("x")
    with pytest.raises(InputError, match=r"a\.csv: unknown file type '\.csv'"):
        iter_documents(str(odd))


def test_hf_dataset_failure_is_input_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def offline(*_a, **_k):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(InputError, match="corpus org/nothing: .* could not be loaded"):
        iter_documents("org/nothing")


def test_hf_dataset_streaming_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    calls = {}

    def fake(spec, split, streaming):
        calls.update(spec=spec, split=split, streaming=streaming)
        return datasets.Dataset.from_dict({"content": ["r", "", "s"]})

    monkeypatch.setattr(datasets, "load_dataset", fake)
    assert list(iter_documents("org/data", text_field="content")) == ["r", "s"]
    assert calls == {"spec": "org/data", "split": "train", "streaming": True}


def test_hf_streaming_row_without_field(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    rows = [{"content": "r"}]
    monkeypatch.setattr(datasets, "load_dataset", lambda *_a, **_k: iter(rows))
    with pytest.raises(
        InputError, match="corpus org/data row 1: no field 'text' \\(fields: content"
    ):
        list(iter_documents("org/data"))
