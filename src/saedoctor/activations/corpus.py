"""Text corpora: builtin (from the CPython stdlib), local files, or Hugging Face datasets.

Builtin corpora need no download, so the embedded default works offline (SPEC §7):

- `python-docs`: docstrings (module, class, function) of the stdlib `.py` sources, parsed
  with `ast` and never imported, plus the `pydoc_data.topics` help texts: English prose.
  One document per docstring / topic.
- `python-code`: the text of each stdlib `.py` file, one document per file.

Each builtin corpus has a fixed train/test split (10 % test) by a stable hash of the
source file's path relative to the stdlib (for topics: of the topic name), so all the
docstrings of one module fall on the same side. Choose it with `python-docs@train`,
`python-docs@test` or `split=`; with neither you get the whole corpus.

Local `.txt` files hold several documents separated by a line holding only a form feed
(`\\f`) or by two or more consecutive blank lines; a single blank line is a paragraph break
inside a document. `.jsonl` holds one JSON object per line with the text in `text_field`;
`.parquet` a `text_field` column. A directory is read recursively (sorted), ignoring other
files, unless it is a dataset saved with `datasets.save_to_disk`.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from saedoctor.errors import InputError

BUILTIN_CORPORA = ("python-docs", "python-code")
SPLITS = ("train", "test")
TEST_PERCENT = 10
LOCAL_EXTENSIONS = (".txt", ".jsonl", ".parquet")
# Directories in the stdlib that hold tests, test data or third-party code, not the library.
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
_PARQUET_BATCH_ROWS = 1024


def iter_documents(
    spec: str, *, text_field: str = "text", split: str | None = None
) -> Iterator[str]:
    """Documents of a corpus, lazily; raises InputError up front for a bad spec."""
    name, at, suffix = spec.partition("@")
    if name in BUILTIN_CORPORA:
        return _builtin(name, _builtin_split(spec, suffix if at else None, split))
    path = Path(spec).expanduser()
    if path.is_dir():
        return _directory(path, text_field, split)
    if path.is_file():
        return _local_file(path, text_field)
    if _looks_like_path(spec):
        raise InputError(f"corpus {spec}: file or directory not found")
    return _hf_dataset(spec, text_field, split)


def _looks_like_path(spec: str) -> bool:
    # Hub ids look like "org/name", so only explicit path forms and known extensions count.
    return spec.startswith((".", "/", "~", "\\")) or spec.lower().endswith(LOCAL_EXTENSIONS)


# ---- builtin corpora ---------------------------------------------------------------------


def _builtin_split(spec: str, suffix: str | None, split: str | None) -> str | None:
    chosen = suffix if suffix is not None else split
    if suffix and split and suffix != split:
        raise InputError(f"corpus {spec}: split {split!r} contradicts the spec's @{suffix}")
    if chosen is not None and chosen not in SPLITS:
        raise InputError(f"corpus {spec}: split {chosen!r}, expected one of {', '.join(SPLITS)}")
    return chosen


def is_test_key(key: str) -> bool:
    """Stable (cross-run, cross-platform) 10 % test assignment; `hash()` is salted per run."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100 < TEST_PERCENT


def _in_split(key: str, split: str | None) -> bool:
    return split is None or is_test_key(key) == (split == "test")


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_sources(root: Path | None = None) -> list[Path]:
    """Sorted stdlib `.py` files, without tests, test data and installed packages."""
    root = root or stdlib_dir()
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _skip_dir(d))
        found.extend(Path(dirpath) / f for f in filenames if f.endswith(".py"))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _skip_dir(name: str) -> bool:
    return name in _SKIP_DIRS or name.startswith((".", "test_")) or "-packages" in name


def _read_text(path: Path) -> str | None:
    """The file's text, or None if it cannot be read as UTF-8 (skipped, not fatal)."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _builtin(name: str, split: str | None) -> Iterator[str]:
    root = stdlib_dir()
    if name == "python-code":
        yield from _python_code(root, split)
    else:
        yield from _python_docs(root, split)


def _python_code(root: Path, split: str | None) -> Iterator[str]:
    for path in stdlib_sources(root):
        key = path.relative_to(root).as_posix()
        # pydoc_data holds the prose help texts: that belongs to python-docs, not code.
        if key.startswith("pydoc_data/") or not _in_split(key, split):
            continue
        text = _read_text(path)
        if text and text.strip():
            yield text


def _python_docs(root: Path, split: str | None) -> Iterator[str]:
    for path in stdlib_sources(root):
        key = path.relative_to(root).as_posix()
        if key.startswith("pydoc_data/") or not _in_split(key, split):
            continue
        yield from _docstrings(path)
    yield from _pydoc_topics(root / "pydoc_data" / "topics.py", split)


def _parse(path: Path) -> ast.Module | None:
    text = _read_text(path)
    if text is None:
        return None
    try:
        return ast.parse(text, filename=str(path))
    except (SyntaxError, ValueError):  # e.g. lib2to3 test data, files for other versions
        return None


def _docstrings(path: Path) -> Iterator[str]:
    tree = _parse(path)
    if tree is None:
        return
    documented = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    for node in ast.walk(tree):
        if isinstance(node, documented):
            doc = ast.get_docstring(node, clean=True)
            if doc and doc.strip():
                yield doc


def _pydoc_topics(path: Path, split: str | None) -> Iterator[str]:
    """The `topics` dict of pydoc_data/topics.py, read with ast.literal_eval (not imported)."""
    tree = _parse(path)
    if tree is None:
        return
    for node in tree.body:
        if isinstance(node, ast.Assign) and _assigns(node, "topics"):
            try:
                topics = ast.literal_eval(node.value)
            except ValueError:
                return
            for topic in sorted(topics):
                text = topics[topic]
                if _in_split(f"pydoc_data.topics:{topic}", split) and text.strip():
                    yield text


def _assigns(node: ast.Assign, name: str) -> bool:
    return any(isinstance(t, ast.Name) and t.id == name for t in node.targets)


# ---- local files ---------------------------------------------------------------------------


def _local_file(path: Path, text_field: str) -> Iterator[str]:
    readers = {".txt": _txt, ".jsonl": _jsonl, ".parquet": _parquet}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise InputError(
            f"corpus {path}: unknown file type {path.suffix or '(none)'!r}, expected "
            f"{', '.join(LOCAL_EXTENSIONS)}, a directory, or a Hugging Face dataset id"
        )
    if reader is _parquet:
        _check_parquet_column(path, text_field)
    return reader(path, text_field)


def _txt(path: Path, _text_field: str) -> Iterator[str]:
    """Stream documents split on form-feed lines or runs of 2+ blank lines."""
    lines: list[str] = []
    blank_run = 0
    with _open_text(path) as handle:
        for line in handle:
            stripped = line.strip(" \t\r\n")
            if stripped == "\f" or (stripped and blank_run >= 2):
                yield from _flush(lines)
                lines = []
            if stripped == "\f":
                blank_run = 0
                continue
            blank_run = 0 if stripped else blank_run + 1
            lines.append(line)
    yield from _flush(lines)


def _flush(lines: list[str]) -> Iterator[str]:
    text = "".join(lines).strip()
    if text:
        yield text


def _open_text(path: Path) -> TextIO:
    try:
        return path.open(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise InputError(f"corpus {path}: cannot be read ({exc.strerror})") from exc


def _jsonl(path: Path, text_field: str) -> Iterator[str]:
    with _open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield _jsonl_text(path, number, line, text_field)


def _jsonl_text(path: Path, number: int, line: str, text_field: str) -> str:
    where = f"corpus {path} line {number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: not valid JSON ({exc.msg})") from exc
    # An integer past Python's digit limit, or arrays nested thousands deep.
    except (ValueError, RecursionError) as exc:
        raise InputError(f"{where}: not usable JSON ({exc})") from exc
    if not isinstance(record, dict) or text_field not in record:
        raise InputError(f"{where}: expected a JSON object with a {text_field!r} field")
    text = record[text_field]
    if not isinstance(text, str):
        raise InputError(f"{where}: field {text_field!r} is {type(text).__name__}, expected str")
    return text


def _check_parquet_column(path: Path, text_field: str) -> None:
    import pyarrow.parquet as pq

    try:
        names = pq.ParquetFile(path).schema_arrow.names
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise InputError(f"corpus {path}: not a readable parquet file ({exc})") from exc
    if text_field not in names:
        raise InputError(
            f"corpus {path}: no column {text_field!r} (columns: {', '.join(names)}); "
            "choose one with the text field option"
        )


def _parquet(path: Path, text_field: str) -> Iterator[str]:
    """Row-group batches, so memory stays bounded whatever the file size."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    batches = parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=[text_field])
    while (batch := _next_batch(batches, path)) is not None:
        for text in batch.column(0).to_pylist():
            if isinstance(text, str) and text.strip():
                yield text


def _next_batch(batches: Iterator, path: Path) -> Any:
    """The next record batch, or None; a valid footer can still front corrupt data pages."""
    try:
        return next(batches, None)
    except Exception as exc:  # pyarrow raises OSError, ArrowInvalid, ... for corrupt pages
        raise InputError(f"corpus {path}: corrupt parquet data ({exc})") from exc


def _directory(path: Path, text_field: str, split: str | None) -> Iterator[str]:
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        return _saved_dataset(path, text_field, split)
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and p.suffix.lower() in LOCAL_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise InputError(
            f"corpus {path}: directory holds no {', '.join(LOCAL_EXTENSIONS)} files "
            "and is not a dataset saved with datasets.save_to_disk"
        )
    for file in files:
        if file.suffix.lower() == ".parquet":
            _check_parquet_column(file, text_field)
    return (doc for file in files for doc in _local_file(file, text_field))


# ---- Hugging Face datasets ---------------------------------------------------------------


def _saved_dataset(path: Path, text_field: str, split: str | None) -> Iterator[str]:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        chosen = split or "train"
        if chosen not in loaded:
            raise InputError(
                f"corpus {path}: no split {chosen!r} (splits: {', '.join(loaded.keys())})"
            )
        loaded = loaded[chosen]
    _check_columns(str(path), loaded.column_names, text_field)
    return _rows(loaded, text_field, str(path))


def _hf_dataset(spec: str, text_field: str, split: str | None) -> Iterator[str]:
    """Thin: stream the dataset; failures to find it become one clear line."""
    import datasets

    try:
        dataset = datasets.load_dataset(spec, split=split or "train", streaming=True)
    except Exception as exc:  # datasets raises many types (not found, offline, bad config)
        raise InputError(
            f"corpus {spec}: not a builtin corpus ({', '.join(BUILTIN_CORPORA)}), local file "
            f"or directory, and could not be loaded as a Hugging Face dataset "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    columns = getattr(dataset, "column_names", None)
    if columns is not None:
        _check_columns(spec, columns, text_field)
    return _rows(dataset, text_field, spec)


def _check_columns(spec: str, columns: list[str], text_field: str) -> None:
    if text_field not in columns:
        raise InputError(
            f"corpus {spec}: no column {text_field!r} (columns: {', '.join(columns)}); "
            "choose one with the text field option"
        )


def _rows(dataset: object, text_field: str, spec: str) -> Iterator[str]:
    for number, row in enumerate(dataset, start=1):  # type: ignore[call-overload]
        if text_field not in row:
            # Streaming datasets may not know their columns up front: check each row.
            raise InputError(
                f"corpus {spec} row {number}: no field {text_field!r} "
                f"(fields: {', '.join(row)}); choose one with the text field option"
            )
        text = row[text_field]
        if isinstance(text, str) and text.strip():
            yield text
