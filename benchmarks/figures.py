"""Every figure in README.md and docs/**/*.md checked against the result file it cites.

    .venv/bin/python benchmarks/figures.py --check   # exit 1 listing every mismatch
    .venv/bin/python benchmarks/figures.py --list    # every cited figure, shown and expected
    .venv/bin/python benchmarks/figures.py --update  # rewrite each figure's text from its result

A figure cites its result with an invisible HTML comment pair around the figure's text:

    <!-- fig FILE KEY FORMAT -->TEXT<!-- /fig -->
    e.g. **<!-- fig train_throughput.json e2e.ratio.median x2 -->2.45×<!-- /fig --> SAELens**

- FILE: a result file relative to benchmarks/results/ (written by a script in benchmarks/).
- KEY: a path into its JSON: `a.b[2].c`, `runs[-1]`, `rows["b_dec_init only"].dead_pct`
  (quoted segments for keys holding spaces or dots).
- FORMAT: a name from `FORMATTERS` below, or any Python format spec (`.3f`, `,.0f`, `.2%`).
- TEXT: must equal the formatted value exactly; a line break inside TEXT (a reflowed
  paragraph) counts as one space.

Markers work inside table cells and on one line or across a reflowed paragraph; GitHub drops
the comments when rendering. Markers inside fenced code blocks and `inline code` are ignored
(so the syntax can be documented). The check also reports markers whose file or key does not
exist, and cited result files that lack the envelope or hold a timing with fewer than 5 runs
and no recorded reason (`_results.document_problems`).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import document_problems  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS_SUBDIR = Path("benchmarks") / "results"

# -- formatters -------------------------------------------------------------------------------
Formatter = Callable[[Any], str]
FORMATTERS: dict[str, tuple[Formatter, str]] = {}


def _register(name: str, doc: str) -> Callable[[Formatter], Formatter]:
    def add(fn: Formatter) -> Formatter:
        FORMATTERS[name] = (fn, doc)
        return fn

    return add


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    return float(value)


def _grouped(n: int, sep: str) -> str:
    return f"{n:,}".replace(",", sep)


@_register("str", "the value as it is (strings: grades, corpus names)")
def _str(value: Any) -> str:
    return str(value)


@_register("int", "rounded to an integer: 32.0 → 32")
def _int(value: Any) -> str:
    return str(round(_number(value)))


@_register("int_sp", "integer, thousands separated by a plain space: 12443.4 → 12 443")
def _int_sp(value: Any) -> str:
    return _grouped(round(_number(value)), " ")


@_register("len", "number of items of a list or object: [3, 9, 12] → 3")
def _len(value: Any) -> str:
    if not isinstance(value, list | dict):
        raise TypeError(f"len: expected a list or object, got {type(value).__name__}")
    return str(len(value))


def _pct(digits: int) -> Formatter:
    return lambda value: f"{_number(value) * 100:.{digits}f}"


def _ratio(digits: int) -> Formatter:
    return lambda value: f"{_number(value):.{digits}f}×"


def _sci(digits: int) -> Formatter:
    def fmt(value: Any) -> str:
        x = _number(value)
        if x == 0:
            return "0"
        mantissa, exponent = f"{x:.{digits}e}".split("e")
        return f"{mantissa}e{int(exponent)}"

    return fmt


def _seconds(digits: int) -> Formatter:
    return lambda value: f"{_number(value):.{digits}f} s"


for _d in (0, 1, 2):
    _register(f"pct{_d}", f"fraction as a percentage, {_d} decimals, no sign: "
                          f"0.6712 → {_pct(_d)(0.6712)}")(_pct(_d))  # fmt: skip
    _register(f"s{_d}", f"seconds, {_d} decimals: 99.54 → {_seconds(_d)(99.54)}")(_seconds(_d))
for _d in (1, 2):
    _register(f"x{_d}", f"ratio, {_d} decimals, times sign: 5.284 → {_ratio(_d)(5.284)}")(
        _ratio(_d))  # fmt: skip
    _register(f"e{_d}", f"scientific, {_d} decimal(s), short exponent: 4.12e-06 → "
                        f"{_sci(_d)(4.12e-6)} (0 → 0)")(_sci(_d))  # fmt: skip


@_register("mmss", "seconds as minutes and seconds, rounded to the second: 345.6 → "
                   "5 min 46 s, 46.2 → 46 s, 900 → 15 min 0 s")  # fmt: skip
def _mmss(value: Any) -> str:
    total = round(_number(value))
    minutes, seconds = divmod(total, 60)
    return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


_FORMAT_SPEC = re.compile(r"^(.?[<>=^])?[+\- ]?z?#?0?\d*[,_]?(\.\d+)?[bcdeEfFgGnosxX%]?$")


def format_value(value: Any, fmt: str) -> str:
    """`value` formatted by the named formatter `fmt`, else by `fmt` as a Python spec."""
    if fmt in FORMATTERS:
        return FORMATTERS[fmt][0](value)
    if not _FORMAT_SPEC.match(fmt):
        raise ValueError(f"unknown format {fmt!r} (named: {', '.join(sorted(FORMATTERS))}; "
                         "or a Python format spec such as .3f)")  # fmt: skip
    if isinstance(value, int | float) and not isinstance(value, bool):
        _number(value)
    return format(value, fmt)


# -- keys ----------------------------------------------------------------------------------
_SEGMENT = re.compile(
    r'(?:^|\.)(?P<name>[^.\[\]"\s]+)|\[(?P<index>-?\d+)\]|\["(?P<quoted>[^"]*)"\]'
)


class KeyNotFound(LookupError):
    pass


def parse_key(key: str) -> list[str | int]:
    """`a.b[2]["c d"]` → ['a', 'b', 2, 'c d']."""
    parts: list[str | int] = []
    pos = 0
    while pos < len(key):
        match = _SEGMENT.match(key, pos)
        if match is None or match.end() == pos:
            raise KeyNotFound(f"key {key!r}: cannot parse at {key[pos:]!r}")
        if match["index"] is not None:
            parts.append(int(match["index"]))
        else:
            parts.append(match["name"] if match["name"] is not None else match["quoted"])
        pos = match.end()
    if not parts:
        raise KeyNotFound("empty key")
    return parts


def resolve(document: Any, key: str) -> Any:
    """The value at `key` in a JSON document; KeyNotFound names the first missing step."""
    node, walked = document, ""
    for part in parse_key(key):
        if isinstance(part, int):
            if not isinstance(node, list):
                raise KeyNotFound(f"{walked or 'the document'} is not a list (index [{part}])")
            if not -len(node) <= part < len(node):
                raise KeyNotFound(f"{walked}[{part}]: index out of range ({len(node)} items)")
            node, walked = node[part], f"{walked}[{part}]"
        else:
            if not isinstance(node, dict) or part not in node:
                have = ", ".join(list(node)[:12]) if isinstance(node, dict) else "not an object"
                raise KeyNotFound(f"{walked + '.' if walked else ''}{part}: not found "
                                  f"(there: {have})")  # fmt: skip
            node, walked = node[part], f"{walked}.{part}" if walked else part
    return node


# -- markers in Markdown -------------------------------------------------------------------------
_OPEN = re.compile(r"<!--\s*fig\b(?P<head>.*?)-->", re.S)
_CLOSE = re.compile(r"<!--\s*/fig\s*-->")
_HEAD = re.compile(r"^\s+(?P<file>\S+)\s+(?P<key>\S.*?)\s+(?P<fmt>\S+)\s*$", re.S)
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_INLINE_CODE = re.compile(r"(`+)(?!`).+?(?<!`)\1", re.S)


@dataclass(frozen=True)
class Figure:
    """One cited figure: where it is, what it cites, what it shows."""

    doc: Path
    line: int
    file: str
    key: str
    fmt: str
    shown: str

    def cite(self) -> str:
        return f"{self.file} {self.key} {self.fmt}"


@dataclass(frozen=True)
class Problem:
    doc: Path
    line: int
    message: str

    def show(self, root: Path) -> str:
        return f"{_rel(self.doc, root)}:{self.line}: {self.message}"


def _mask_code(text: str) -> str:
    """Code (fenced blocks, inline spans) blanked out, offsets and newlines kept."""
    lines, fence = text.split("\n"), None
    for i, line in enumerate(lines):
        match = _FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)[0]
            lines[i] = " " * len(line)
        elif fence is not None:
            if match and match.group(1)[0] == fence:
                fence = None
            lines[i] = " " * len(line)
    masked = "\n".join(lines)
    return _INLINE_CODE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), masked)


def find_figures(text: str, doc: Path) -> tuple[list[Figure], list[Problem]]:
    """Every marker of a Markdown text; malformed ones (no closing tag, bad header, a stray
    closing tag) as problems."""
    masked = _mask_code(text)
    figures: list[Figure] = []
    problems: list[Problem] = []
    used_closes: set[int] = set()
    opens = list(_OPEN.finditer(masked))
    for n, opener in enumerate(opens):
        line = masked.count("\n", 0, opener.start()) + 1
        head = _HEAD.match(opener["head"])
        close = _CLOSE.search(masked, opener.end())
        next_open = opens[n + 1].start() if n + 1 < len(opens) else len(masked)
        if close is None or close.start() > next_open:
            problems.append(Problem(doc, line, "fig marker without its closing <!-- /fig -->"))
            continue
        used_closes.add(close.start())
        if head is None:
            problems.append(Problem(doc, line, f"fig marker {opener.group(0)!r}: expected "
                                               "<!-- fig FILE KEY FORMAT -->"))  # fmt: skip
            continue
        shown = re.sub(r"[ \t]*\n[ \t]*", " ", text[opener.end() : close.start()])
        figures.append(Figure(doc, line, head["file"], head["key"], head["fmt"], shown))
    for close in _CLOSE.finditer(masked):
        if close.start() not in used_closes:
            line = masked.count("\n", 0, close.start()) + 1
            problems.append(Problem(doc, line, "<!-- /fig --> without an opening fig marker"))
    return figures, problems


def markdown_files(root: Path) -> list[Path]:
    """README.md and every docs/**/*.md under `root`."""
    docs = sorted((root / "docs").rglob("*.md")) if (root / "docs").is_dir() else []
    readme = root / "README.md"
    return ([readme] if readme.is_file() else []) + docs


# -- checking --------------------------------------------------------------------------------
class _Results:
    """Result files loaded once each; a file that cannot be used is remembered as a reason."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder.resolve()
        self.loaded: dict[str, Any] = {}
        self.errors: dict[str, str] = {}

    def get(self, name: str) -> Any:
        if name not in self.loaded and name not in self.errors:
            self._load(name)
        if name in self.errors:
            raise KeyNotFound(self.errors[name])
        return self.loaded[name]

    def _load(self, name: str) -> None:
        path = (self.folder / name).resolve()
        if not path.is_relative_to(self.folder):
            self.errors[name] = f"{name}: outside {self.folder}"
        elif not path.is_file():
            self.errors[name] = f"no result file {path}"
        else:
            try:
                self.loaded[name] = json.loads(path.read_text(encoding="utf-8"))
            except (ValueError, OSError) as err:
                self.errors[name] = f"{path}: not readable JSON ({err})"


def expected_text(figure: Figure, results: _Results) -> str:
    """What the figure must show; KeyNotFound / ValueError / TypeError say why it cannot."""
    return format_value(resolve(results.get(figure.file), figure.key), figure.fmt)


def collect(root: Path) -> tuple[list[Figure], list[Problem]]:
    figures, problems = [], []
    for doc in markdown_files(root):
        found, bad = find_figures(doc.read_text(encoding="utf-8"), doc)
        figures += found
        problems += bad
    return figures, problems


def check(root: Path = REPO, results_dir: Path | None = None) -> list[Problem]:
    """Every way the documents under `root` disagree with their result files."""
    results = _Results(results_dir or root / RESULTS_SUBDIR)
    figures, problems = collect(root)
    envelope_checked: set[str] = set()
    for fig in figures:
        try:
            expected = expected_text(fig, results)
        except (KeyNotFound, ValueError, TypeError) as err:
            problems.append(Problem(fig.doc, fig.line, f"fig {fig.cite()}: {err}"))
            continue
        if expected != fig.shown:
            message = f"fig {fig.cite()}: shows {fig.shown!r}, the result gives {expected!r}"
            problems.append(Problem(fig.doc, fig.line, message))
        if fig.file not in envelope_checked:
            envelope_checked.add(fig.file)
            for issue in document_problems(results.get(fig.file)):
                problems.append(Problem(fig.doc, fig.line, f"{fig.file}: {issue}"))
    return sorted(problems, key=lambda p: (str(p.doc), p.line))


def listing(root: Path = REPO, results_dir: Path | None = None) -> list[str]:
    results = _Results(results_dir or root / RESULTS_SUBDIR)
    figures, _ = collect(root)
    lines = []
    for fig in figures:
        try:
            expected = expected_text(fig, results)
        except (KeyNotFound, ValueError, TypeError) as err:
            expected = f"<{err}>"
        mark = "ok" if expected == fig.shown else "MISMATCH"
        lines.append(f"{_rel(fig.doc, root)}:{fig.line}\t{fig.cite()}\t{fig.shown!r}\t{mark}"
                     + ("" if mark == "ok" else f" (expected {expected!r})"))  # fmt: skip
    return lines


def update(root: Path = REPO, results_dir: Path | None = None) -> list[str]:
    """Rewrite every resolvable figure's TEXT with its result's value; the figures changed."""
    results = _Results(results_dir or root / RESULTS_SUBDIR)
    changed = []
    for doc in markdown_files(root):
        text = doc.read_text(encoding="utf-8")
        spans = _figure_spans(text, doc)
        for fig, start, end in reversed(spans):
            try:
                expected = expected_text(fig, results)
            except (KeyNotFound, ValueError, TypeError):
                continue
            if expected != fig.shown:
                text = text[:start] + expected + text[end:]
                changed.append(f"{_rel(doc, root)}:{fig.line}\t{fig.cite()}\t"
                               f"{fig.shown!r} -> {expected!r}")  # fmt: skip
        if spans and text != doc.read_text(encoding="utf-8"):
            doc.write_text(text, encoding="utf-8")
    return changed


def _figure_spans(text: str, doc: Path) -> list[tuple[Figure, int, int]]:
    """Each well-formed figure with the offsets of its TEXT."""
    masked = _mask_code(text)
    spans = []
    for opener in _OPEN.finditer(masked):
        head = _HEAD.match(opener["head"])
        close = _CLOSE.search(masked, opener.end())
        following = _OPEN.search(masked, opener.end())
        if head is None or close is None or (following and following.start() < close.start()):
            continue
        line = masked.count("\n", 0, opener.start()) + 1
        shown = re.sub(r"[ \t]*\n[ \t]*", " ", text[opener.end() : close.start()])
        figure = Figure(doc, line, head["file"], head["key"], head["fmt"], shown)
        spans.append((figure, opener.end(), close.start()))
    return spans


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=_formats_help())  # fmt: skip
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--check", action="store_true", help="exit 1 listing mismatches (default)")
    what.add_argument("--list", action="store_true", help="print every cited figure")
    what.add_argument("--update", action="store_true",
                      help="rewrite each figure's text from its result file")  # fmt: skip
    parser.add_argument("--root", type=Path, default=REPO, help="repository root")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(listing(args.root)) or "no fig markers")
        return 0
    if args.update:
        print("\n".join(update(args.root)) or "every figure already matches its result")
    problems = check(args.root)
    for problem in problems:
        print(problem.show(args.root))
    figures, _ = collect(args.root)
    print(f"{len(figures)} figures checked, {len(problems)} problems", file=sys.stderr)
    return 1 if problems else 0


def _formats_help() -> str:
    rows = [f"  {name:<7} {doc}" for name, (_, doc) in sorted(FORMATTERS.items())]
    return "formats:\n" + "\n".join(rows) + "\n  or any Python format spec: .3f ,.0f .2% d"


if __name__ == "__main__":
    raise SystemExit(main())
