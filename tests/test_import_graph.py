"""No import cycles, and no package importing one above it in the flow.

Every module under src/saedoctor is parsed with `ast`; its imports of `saedoctor.*` count
wherever they stand (module level, inside functions, under `if TYPE_CHECKING`), and
`from saedoctor.x import y` counts as an import of module `saedoctor.x.y` when that module
exists, else of `saedoctor.x`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "saedoctor"
ROOT = "<root>"  # the package's __init__: the public API, on top of everything

# The flow, lowest first (text → tokens → activations → SAE codes → metrics → health → report
# → the jobs → the command line): a module may import its own layer and the ones below.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "defaults", "atomic", "progress", "version", "options", "limits",
     "thresholds", "callable_package"),
    ("sae",),
    ("activations",),
    ("metrics",),
    ("health",),
    ("report",),
    ("diagnose_state", "distributed", "diagnose", "train"),
    ("commands",),
    ("cli", "__main__", ROOT),
)  # fmt: skip
# Known imports of a higher layer, each with why it is still there. A new one fails the test.
ALLOWED_UPWARD: set[tuple[str, str]] = set()


def module_files(src: Path, package: str) -> dict[str, Path]:
    """Module name → file, for every module of `package` under `src`."""
    out = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, modules: dict[str, Path], package: str) -> set[str]:
    """The modules of `package` that module `name` imports, anywhere in its file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(name, path, node)
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m.split(".")[0] == package and m in modules and m != name}


def _from_base(name: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    parts = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    parts = parts[: len(parts) - node.level + 1]
    return ".".join(parts + ([node.module] if node.module else []))


def import_graph(src: Path, package: str) -> dict[str, set[str]]:
    modules = module_files(src, package)
    return {name: imports_of(name, path, modules, package) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a path back to its start) per strongly connected component (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(_path_back(graph, min(component), component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _path_back(graph: dict[str, set[str]], start: str, within: set[str]) -> list[str]:
    """A shortest path start → ... → start inside one component (breadth first)."""
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for nxt in sorted(graph[node] & within):
                if nxt == start:
                    path = [node]  # walked back to the start, then reversed
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if nxt not in came_from:
                    came_from[nxt] = node
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    raise AssertionError(f"{start}: no path back within its component")


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else ROOT
    for level, names in enumerate(LAYERS):
        if top in names:
            return level
    raise AssertionError(f"{module}: its package {top!r} is in no layer of LAYERS")


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((a, b) for a, imported in graph.items() for b in imported
                  if layer_of(b) > layer_of(a))  # fmt: skip


# -- the project's own graph ------------------------------------------------------------------
def test_no_import_cycles():
    found = cycles(import_graph(SRC, PACKAGE))
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_no_package_imports_one_above_it():
    graph = import_graph(SRC, PACKAGE)
    bad = [f"{a} -> {b}" for a, b in upward_imports(graph) if (a, b) not in ALLOWED_UPWARD]
    assert not bad, "imports of a higher layer:\n" + "\n".join(bad)


def test_command_modules_never_import_the_top_level_cli():
    graph = import_graph(SRC, PACKAGE)
    importers = sorted(m for m, imported in graph.items() if "saedoctor.cli" in imported)
    assert importers == ["saedoctor.__main__"]


# -- the checker itself, on planted packages ---------------------------------------------------
def _plant(tmp_path: Path, files: dict[str, str]) -> dict[str, set[str]]:
    for rel, text in files.items():
        path = tmp_path / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return import_graph(tmp_path, "pkg")


def test_function_level_and_submodule_imports_are_seen(tmp_path):
    graph = _plant(tmp_path, {
        "__init__.py": "",
        "a.py": "def f():\n    from pkg.sub import b\n",
        "sub/__init__.py": "from . import c\nfrom .c import VALUE\n",
        "sub/b.py": "if False:\n    import pkg.a\n",
        "sub/c.py": "from pkg import a\nVALUE = 1\n",
    })  # fmt: skip
    assert graph == {"pkg": set(), "pkg.a": {"pkg.sub.b"}, "pkg.sub": {"pkg.sub.c"},
                     "pkg.sub.b": {"pkg.a"}, "pkg.sub.c": {"pkg.a"}}  # fmt: skip
    assert cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.a"]]


def test_a_three_module_cycle_is_reported_as_a_path():
    graph = {"x": {"y"}, "y": {"z"}, "z": {"x"}, "w": {"x"}}
    assert cycles(graph) == [["x", "y", "z", "x"]]
    assert cycles({"x": {"y"}, "y": set()}) == []


def test_an_upward_import_is_found():
    graph = {"saedoctor.sae.model": {"saedoctor.report.document"},
             "saedoctor.report.document": {"saedoctor.errors"}, "saedoctor.errors": set()}
    assert upward_imports(graph) == [("saedoctor.sae.model", "saedoctor.report.document")]
    with pytest.raises(AssertionError, match="no layer"):
        layer_of("saedoctor.newthing.x")
